"""Shards: schemas round-trip, deterministic WebDataset tars, committed-only reading and export."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import polars as pl
import pytest
import webdataset as wds
from hypothesis import given, strategies as st

from engine.data.commits import commit_uri, committed_shard_uris, read_commits
from engine.data import dataset, shards, storage
from engine.core.types import PartitionCommit, Sample
from tests.unit.test_dataset_import import png_face


def make_sample(i: int, sample_id: str | None = None) -> Sample:
    image = png_face(i)
    return Sample(id=sample_id or f"synth/{i:03d}.png", dataset="SynthFaces", image=image,
                  image_sha256=hashlib.sha256(image).hexdigest(), image_path=f"images/{i:03d}.png",
                  question="What is the emotion of this face?", aus=("AU6", "AU12"), labels=("happiness",),
                  description="reference", meta={"style": {"skin": i}, "tags": ["a", "b"]})


PROVENANCE = {"job_id": "job-1", "model_id": "tiny", "backend": "hf", "attempts": 2, "policy": "strict",
              "verifier_version": "1", "prompt_hash": "abc"}
REWARDS = {"au": 1.0, "acc": 1.0, "format": 1.0, "total": 3.0}


@given(st.text(min_size=1, max_size=40))
def test_keys_are_webdataset_safe_and_reversible(sample_id):
    key = shards.encode_key(sample_id)
    assert "." not in key and "/" not in key and key.isascii()
    assert shards.decode_key(key) == sample_id


def test_sample_row_round_trip():
    sample = make_sample(3)
    assert shards.row_to_sample(shards.sample_to_row(sample)) == sample
    row = shards.accepted_row(sample, "<think>x</think><answer>happiness</answer>", PROVENANCE, REWARDS)
    assert shards.row_to_sample(row).description.startswith("<think>")


def test_webdataset_shard_is_deterministic_and_reads_back(tmp_path):
    samples = [make_sample(i, sample_id=sid) for i, sid in enumerate(["a.b/c", "plain", "ü.png"])]
    rows = [shards.accepted_row(s, f"completion {s.id}", PROVENANCE, REWARDS) for s in samples]
    first = shards.write_webdataset(str(tmp_path / "one.tar"), [shards.wds_record(r) for r in rows])
    second = shards.write_webdataset(str(tmp_path / "two.tar"), [shards.wds_record(r) for r in rows])
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256((tmp_path / "one.tar").read_bytes()).hexdigest()
    assert first.rows == 3 and first.format == "webdataset" and first.kind == "accepted"

    read = list(wds.WebDataset(str(tmp_path / "one.tar"), shardshuffle=False))
    assert [shards.decode_key(r["__key__"]) for r in read] == [s.id for s in samples]
    for record, sample in zip(read, samples):
        meta = shards.decode_shard_json(record["json"])
        assert meta["id"] == sample.id and meta["provenance"]["job_id"] == "job-1"
        assert meta["AUs"] == ["AU6", "AU12"] and meta["rewards"]["total"] == 3.0
        assert record["png"] == sample.image

    with pytest.raises(ValueError, match="duplicate"):
        shards.build_tar([shards.wds_record(rows[0]), shards.wds_record(rows[0])])


def _commit(out: str, partition: int, refs) -> bool:
    commit = PartitionCommit(job_id="job-1", partition=partition, sample_ids_sha256="x", inputs=len(refs),
                             accepted=refs[0].rows, rejected=refs[1].rows, quarantined=0,
                             attempts_histogram={"1": refs[0].rows}, generated_tokens=10, shards=tuple(refs))
    return storage.write_once(commit_uri(out, partition), commit.to_json().encode())


def write_synthesis_output(out: str) -> list[Sample]:
    """A synthesis output with two committed partitions and one uncommitted (crashed) one."""
    storage.write_json(storage.join(out, "job.json"), {"job_id": "job-1"})
    committed = []
    for partition, ids in ((0, [0, 1]), (1, [2]), (2, [3])):
        samples = [make_sample(i) for i in ids]
        accepted = shards.write_parquet(
            storage.join(out, f"accepted/part-{partition:05d}.parquet"),
            [shards.accepted_row(s, f"<think>done {s.id}</think>", PROVENANCE, REWARDS) for s in samples],
            shards.ACCEPTED_SCHEMA)
        rejected = shards.write_parquet(
            storage.join(out, f"rejected/part-{partition:05d}.parquet"),
            [shards.rejected_row(make_sample(10 + partition), [
                {"attempt": 0, "completion": "bad", "reasons": ["format"], "rewards": REWARDS}])],
            shards.REJECTED_SCHEMA)
        if partition < 2:  # partition 2 "crashed" before its commit record
            # Partition 0 records its shards relative to the output (relocatable), partition 1 absolute.
            relative = [dataclasses.replace(ref, uri=ref.uri[len(out) + 1:]) for ref in (accepted, rejected)]
            assert _commit(out, partition, relative if partition == 0 else [accepted, rejected])
            committed += samples
    return committed


def test_only_committed_shards_are_read_and_exported(tmp_path):
    out = str(tmp_path / "synth")
    committed = write_synthesis_output(out)
    assert [c.partition for c in read_commits(out)] == [0, 1]
    assert committed_shard_uris(out, "accepted", "parquet") == [
        f"{out}/accepted/part-00000.parquet", f"{out}/accepted/part-00001.parquet"]
    assert committed_shard_uris(out, "accepted", "webdataset") == []
    with pytest.raises(ValueError):
        committed_shard_uris(out, "everything", "parquet")

    read = list(dataset.iter_samples(out))
    assert [s.id for s in read] == [s.id for s in committed]
    assert read[0].description == f"<think>done {committed[0].id}</think>"

    summary = dataset.export_committed(out, str(tmp_path / "export" / "accepted.jsonl"))
    assert summary["exported"] == len(committed)
    lines = [json.loads(line) for line in (tmp_path / "export" / "accepted.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [s.id for s in committed]
    assert lines[0]["meta_info"]["provenance"]["job_id"] == "job-1"
    assert lines[0]["meta_info"]["source_image"]["path"] == committed[0].image_path
    assert lines[0]["meta_info"]["style"] == committed[0].meta["style"]
    assert (tmp_path / "export" / lines[0]["image"]).read_bytes() == committed[0].image

    # The export is FEA-20K again: it imports with the default image root (its own folder).
    again = list(dataset.iter_samples(str(tmp_path / "export" / "accepted.jsonl")))
    assert [s.image_sha256 for s in again] == [s.image_sha256 for s in committed]

    rejected = dataset.export_committed(out, str(tmp_path / "rej" / "rejected.jsonl"), kind="rejected")
    assert rejected["exported"] == 2
    rows = [json.loads(x) for x in (tmp_path / "rej" / "rejected.jsonl").read_text().splitlines()]
    assert rows[0]["meta_info"]["attempts"][0]["reasons"] == ["format"]

    frame = pl.read_parquet(committed_shard_uris(out, "accepted", "parquet"))
    assert frame["provenance"].struct.field("attempts").to_list() == [2, 2, 2]


def test_commit_records_are_write_once(tmp_path):
    out = str(tmp_path / "synth")
    write_synthesis_output(out)
    original = storage.read_bytes(commit_uri(out, 0))
    refs = read_commits(out)[1].shards
    assert _commit(out, 0, refs) is False
    assert storage.read_bytes(commit_uri(out, 0)) == original


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The reference: Python's tarfile writing the same members with the same fixed metadata."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@given(st.lists(st.tuples(st.text(min_size=1, max_size=130), st.binary(max_size=1500)), min_size=0, max_size=6,
                unique_by=lambda kv: shards.encode_key(kv[0])))
def test_build_tar_writes_exactly_what_tarfile_writes(entries):
    """Headers are stamped from a template for speed; the bytes must stay tarfile's, long names
    (GNU long-name headers) included."""
    records = [{"__key__": shards.encode_key(key), "png": data, "json": {"k": key}} for key, data in entries]
    members = [(f"{r['__key__']}.{field}", shards._member_bytes(r[field])) for r in records for field in ("json", "png")]
    data, count = shards.build_tar(records)
    assert count == len(entries)
    assert data == _tarfile_bytes(members)


def test_shard_json_is_the_record_encoded_once():
    """The stored json carries the row's meta text as it is; decoded, it is the record."""
    sample = dataclasses.replace(make_sample(1, "x/ü"), meta={"z": [1.5, None], "a": {"meta_info": "\"q\""}, "s": "é"},
                                 notes=("aus_sorted",), label_set=("happiness", "sadness"))
    row = shards.accepted_row(sample, 'say "meta_info": "\\u0000" here', PROVENANCE, REWARDS)
    text = shards.fea20k_json(row)
    assert shards.decode_shard_json(text) == shards.fea20k_record(row) | {"notes": list(sample.notes),
                                                                         "label_set": list(sample.label_set)}
    stored = json.loads(text)  # free-form and possibly empty fields are JSON text, one type in every row
    assert all(isinstance(stored[name], str) for name in shards.JSON_TEXT_FIELDS)
    with pytest.raises(ValueError, match="not a JSON object"):
        shards.fea20k_json(row | {"meta": "[1, 2]"})


def test_parquet_stores_images_uncompressed_and_the_rest_with_zstd(tmp_path):
    import pyarrow.parquet as pq

    rows = [shards.accepted_row(make_sample(i), f"completion {i}", PROVENANCE, REWARDS) for i in range(4)]
    ref = shards.write_parquet(str(tmp_path / "a.parquet"), rows, shards.ACCEPTED_SCHEMA)
    group = pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(0)
    codecs = {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}
    assert codecs.pop("image") == "UNCOMPRESSED"
    assert "provenance.job_id" in codecs and "rewards.total" in codecs  # nested leaves are named, not skipped
    assert set(codecs.values()) == {"ZSTD"}
    assert [shards.row_to_sample(r) for r in shards.iter_parquet_rows(ref.uri)] == [
        dataclasses.replace(make_sample(i), description=f"completion {i}") for i in range(4)]
    shards.warm_up()
    assert shards._leaf_columns.cache_info().currsize >= 4  # every schema's column paths known in advance
