"""Every reader reads real shards: accepted (WebDataset + Parquet), rejected and quarantine shards whose
meta_info varies from row to row in shape and type, and whose first rows have empty (unknown) AU
lists, open with datasets.load_dataset("webdataset" | "parquet"), polars.scan_parquet and
webdataset.WebDataset, from disk and from S3."""
from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from engine.core.types import QuarantineRecord
from engine.data import shards, storage
from tests.unit.test_shards import PROVENANCE, REWARDS, make_sample

# datasets infers a WebDataset schema from a shard's first five records: these differ after that.
METAS = [{"style": {"one_sided": []}}, {"style": {"one_sided": ["left"]}}, {"a": 1}, {"a": "x"}, {},
         {"a": [1, {"b": None}]}, {"style": "plain"}, {"style": {"one_sided": ["left", "right"], "n": 2.5}}]


def _samples():
    for i, meta in enumerate(METAS):
        aus = () if i < 6 else ("AU6", "AU12")  # emotion-only rows first: their AUs are unknown
        labels = ("happiness",) if i % 2 else ()
        yield dataclasses.replace(make_sample(i, sample_id=f"src/{i}.png"), aus=aus, labels=labels, meta=meta)


def write_shards(prefix: str) -> dict[str, list[str]]:
    samples = list(_samples())
    accepted = [shards.accepted_row(s, f"<think>{s.id}</think><answer>happiness</answer>", PROVENANCE, REWARDS)
                for s in samples]
    attempt = {"attempt": 0, "completion": "x", "reasons": ["format"], "rewards": REWARDS}
    rejected = [shards.rejected_row(s, [attempt]) for s in samples]
    quarantine = [shards.quarantine_to_row(QuarantineRecord("in.jsonl", i, f"q{i}", "bad_json: x",
                                                            json.dumps({"meta_info": m})))
                  for i, m in enumerate(METAS)]
    uris = {"tar": [storage.join(prefix, "accepted", f"part-{n}.tar") for n in range(2)],
            "accepted": [storage.join(prefix, "accepted", f"part-{n}.parquet") for n in range(2)],
            "rejected": [storage.join(prefix, "rejected", "part-0.parquet")],
            "quarantine": [storage.join(prefix, "quarantine", "part-0.parquet")]}
    for n, half in enumerate((accepted[:6], accepted[6:])):  # the first tar holds only unknown-AU rows
        shards.write_webdataset(uris["tar"][n], [shards.wds_record(r) for r in half])
        shards.write_parquet(uris["accepted"][n], half, shards.ACCEPTED_SCHEMA)
    shards.write_parquet(uris["rejected"][0], rejected, shards.REJECTED_SCHEMA)
    shards.write_parquet(uris["quarantine"][0], quarantine, shards.QUARANTINE_SCHEMA)
    return uris


def check_readers(uris: dict[str, list[str]], cache_dir: str) -> None:
    import datasets
    import polars as pl
    import webdataset as wds

    ids = sorted(f"src/{i}.png" for i in range(len(METAS)))
    options = storage.fsspec_storage_options(uris["tar"][0])
    shards.register_webdataset_s3()
    records = [shards.decode_shard_json(r["json"]) for r in wds.WebDataset(uris["tar"], shardshuffle=False)]
    assert sorted(r["id"] for r in records) == ids
    assert [r["meta_info"] for r in sorted(records, key=lambda r: int(r["id"][4:-4]))] == METAS

    as_wds = datasets.load_dataset("webdataset", data_files=uris["tar"], split="train", storage_options=options,
                                   cache_dir=cache_dir)
    decoded = [shards.decode_shard_json(row) for row in as_wds["json"]]
    assert sorted(r["id"] for r in decoded) == ids
    assert {tuple(r["AUs"]) for r in decoded} == {(), ("AU6", "AU12")}

    for kind in ("accepted", "rejected", "quarantine"):
        frame = pl.scan_parquet(uris[kind], storage_options=storage.polars_storage_options(uris[kind][0])).collect()
        assert frame.height == len(METAS)
        as_parquet = datasets.load_dataset("parquet", data_files=uris[kind], split="train", storage_options=options,
                                           cache_dir=cache_dir)
        assert as_parquet.num_rows == len(METAS)
        if kind != "quarantine":
            assert [json.loads(m) for m in as_parquet["meta"]] == METAS


def test_every_reader_reads_varying_meta_from_disk(tmp_path):
    check_readers(write_shards(str(tmp_path / "out")), str(tmp_path / "hf"))


@pytest.mark.s3
def test_every_reader_reads_varying_meta_from_s3(s3, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # our own object store, not the hub
    check_readers(write_shards(f"s3://fea-test/{uuid.uuid4().hex[:12]}"), str(tmp_path / "hf"))
