"""The storage layer and shards against a real S3 server (SeaweedFS on loopback, the `s3` fixture)."""
from __future__ import annotations

import io
import json
import os
import uuid

import polars as pl
import pytest
import webdataset as wds
from PIL import Image

from engine.data.commits import committed_shard_uris
from engine.data import dataset, shards, storage
from engine.core.types import Sample
from tests.unit.test_dataset_import import png_face, record
from tests.unit.test_shards import PROVENANCE, REWARDS, make_sample, write_synthesis_output

pytestmark = pytest.mark.s3


@pytest.fixture()
def prefix(s3) -> str:
    return f"s3://fea-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def hf_datasets(monkeypatch):
    """`datasets`, allowed to reach our S3 server: the suite runs with HF_HUB_OFFLINE=1 (no model hub
    here), and datasets' offline mode refuses every remote URL, our own object store included."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return datasets


def test_write_once_conditional_put(prefix):
    uri = storage.join(prefix, "commits", "part-00000.json")
    assert not storage.exists(uri)
    assert storage.write_once(uri, b'{"first": true}') is True
    assert storage.exists(uri)
    assert storage.write_once(uri, b'{"second": true}') is False
    assert storage.read_bytes(uri) == b'{"first": true}'
    assert storage.list_files(storage.join(prefix, "commits"), suffix=".json") == [uri]


def test_write_once_concurrent_on_s3_has_one_winner(prefix):
    from concurrent.futures import ThreadPoolExecutor

    uri = storage.join(prefix, "race.json")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: storage.write_once(uri, f"w{i}".encode()), range(4)))
    assert results.count(True) == 1
    assert storage.read_bytes(uri) == f"w{results.index(True)}".encode()


def test_listing_sees_files_written_by_another_client(prefix):
    """s3fs caches listings; a file another process commits must still show up."""
    import boto3

    folder = storage.join(prefix, "commits")
    storage.write_bytes(storage.join(folder, "part-00000.json"), b"{}")
    assert len(storage.list_files(folder)) == 1
    bucket, key = storage.join(folder, "part-00001.json")[len("s3://"):].split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"{}")
    assert len(storage.list_files(folder)) == 2
    assert storage.exists(storage.join(folder, "part-00001.json"))


def _write_input(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        (root / f"{i:04d}.png").write_bytes(png_face(i))
    (root / "bad.png").write_bytes(b"not a png")
    lines = [record(i, image=f"{i:04d}.png") for i in range(4)]
    lines += [record(7, image="bad.png"), record(8, image="../../etc/passwd"), record(1, image="0001.png")]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return jsonl, root


def test_import_to_s3_reads_back_everywhere(prefix, tmp_path, hf_datasets):
    jsonl, root = _write_input(tmp_path)
    out = storage.join(prefix, "canonical")
    summary = dataset.import_fea20k(str(jsonl), str(root), out, rows_per_part=3)
    assert (summary["read"], summary["imported"], summary["quarantined"]) == (7, 4, 3)
    assert summary["by_reason"] == {"duplicate_id": 1, "image_outside_root": 1, "image_undecodable": 1}
    assert json.loads(storage.read_text(storage.join(out, "summary.json"))) == summary

    glob = storage.join(out, "samples", "*.parquet")
    frame = pl.scan_parquet(glob, storage_options=storage.polars_storage_options(out)).collect()
    assert frame["id"].to_list() == [f"raf/train_{i:04d}.jpg" for i in range(4)]
    assert frame["image"][2] == (root / "0002.png").read_bytes()

    hf = hf_datasets.load_dataset("parquet", data_files=glob, split="train", cache_dir=str(tmp_path / "hf"),
                                  storage_options=storage.fsspec_storage_options(out))
    assert sorted(hf["id"]) == frame["id"].to_list()

    local = [s for s in dataset.load_input(str(jsonl), str(root)) if isinstance(s, Sample)]
    assert list(dataset.iter_samples(out)) == local


def test_jsonl_and_images_on_s3(prefix, tmp_path):
    jsonl, root = _write_input(tmp_path)
    for path in root.iterdir():
        storage.write_bytes(storage.join(prefix, "raw", "images", path.name), path.read_bytes())
    storage.write_bytes(storage.join(prefix, "raw", "in.jsonl"), jsonl.read_bytes())
    storage.write_bytes(storage.join(prefix, "raw", "secret.txt"), b"outside the image root")
    extra = json.dumps(record(9, image="../secret.txt")) + "\n"
    storage.write_bytes(storage.join(prefix, "raw", "in.jsonl"), jsonl.read_bytes() + extra.encode())

    items = list(dataset.load_input(storage.join(prefix, "raw", "in.jsonl"), storage.join(prefix, "raw", "images")))
    reasons = [dataset.reason_code(i.reason) for i in items if not isinstance(i, Sample)]
    assert sum(isinstance(i, Sample) for i in items) == 4
    assert sorted(reasons) == ["duplicate_id", "image_outside_root", "image_outside_root", "image_undecodable"]


def test_webdataset_shard_on_s3_reads_with_webdataset_and_datasets(prefix, tmp_path, hf_datasets):
    samples = [make_sample(i, sample_id=f"x.{i}/y") for i in range(3)]
    rows = [shards.accepted_row(s, f"<think>{s.id}</think>", PROVENANCE, REWARDS) for s in samples]
    uri = storage.join(prefix, "accepted", "part-00000.tar")
    ref = shards.write_webdataset(uri, [shards.wds_record(r) for r in rows])
    assert ref.rows == 3

    shards.register_webdataset_s3()
    read = list(wds.WebDataset(uri, shardshuffle=False).decode("pil"))
    assert [r["json"]["id"] for r in read] == [s.id for s in samples]
    assert read[0]["png"].size == (48, 48)
    assert [r["__key__"] for r in shards.open_webdataset([uri], shardshuffle=False)] == [
        shards.encode_key(s.id) for s in samples]

    hf = hf_datasets.load_dataset("webdataset", data_files={"train": uri}, split="train",
                                  cache_dir=str(tmp_path / "hf"), storage_options=storage.fsspec_storage_options(uri))
    assert [row["json"]["id"] for row in hf] == [s.id for s in samples]
    assert isinstance(hf[0]["png"], Image.Image)
    buf = io.BytesIO()
    hf[1]["png"].save(buf, format="PNG")
    assert Image.open(buf).size == (48, 48)


def test_committed_output_on_s3_exports_locally(prefix, tmp_path):
    out = storage.join(prefix, "synth")
    committed = write_synthesis_output(out)
    assert committed_shard_uris(out, "accepted", "parquet") == [
        f"{out}/accepted/part-00000.parquet", f"{out}/accepted/part-00001.parquet"]
    summary = dataset.export_committed(out, str(tmp_path / "export" / "out.jsonl"))
    assert summary["exported"] == len(committed)
    assert [s.id for s in dataset.iter_samples(str(tmp_path / "export" / "out.jsonl"))] == [s.id for s in committed]


def test_materialize_copies_once_and_reuses_the_cache(prefix, tmp_path):
    model = storage.join(prefix, "models", "tiny")
    storage.write_bytes(storage.join(model, "config.json"), b'{"hidden": 128}')
    storage.write_bytes(storage.join(model, "weights", "model.safetensors"), os.urandom(4096))
    cache = tmp_path / "cache"

    first = storage.materialize(model, cache_dir=cache)
    assert open(os.path.join(first, "config.json"), "rb").read() == b'{"hidden": 128}'
    assert os.path.getsize(os.path.join(first, "weights", "model.safetensors")) == 4096
    marker = os.stat(os.path.join(first, "config.json")).st_ino
    assert storage.materialize(model, cache_dir=cache) == first
    assert os.stat(os.path.join(first, "config.json")).st_ino == marker  # not copied again
    assert len(os.listdir(cache / "materialized")) == 1

    storage.write_bytes(storage.join(model, "config.json"), b'{"hidden": 256}')  # the remote folder changed
    changed = storage.materialize(model, cache_dir=cache)
    assert changed != first and open(os.path.join(changed, "config.json"), "rb").read() == b'{"hidden": 256}'
    with pytest.raises(FileNotFoundError):
        storage.materialize(storage.join(prefix, "models", "absent"), cache_dir=cache)


def test_secrets_stay_out_of_written_artifacts(prefix, tmp_path):
    jsonl, root = _write_input(tmp_path)
    out = storage.join(prefix, "canonical")
    dataset.import_fea20k(str(jsonl), str(root), out)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    for uri in storage.list_files(out, recursive=True):
        assert secret not in storage.read_bytes(uri)
