"""The trainer's reader of a synthesis output, partition by partition: a recorded partition set
(DataSource.partitions) is read exactly, and the WebDataset tars give the same rows as the Parquet
shards, on local disk and on the SeaweedFS S3 server."""
from __future__ import annotations

import pytest

from engine.core.config import ConfigError, DataSource, SFTSection, load_config
from engine.data.commits import read_commits, resolve_shard_uri
from engine.data import shards, storage
from engine.synth.job import run_synth
from tests.integration.test_synth import face_records, out_location, subset_jsonl, synth_config, write_replay
from trainer.data import build_dataset

WHERE = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(scope="module", params=WHERE)
def output(request, ray_local, faces, tmp_path_factory) -> str:
    """A finished replay job over 9 faces in partitions of 3; the second face of partition 1 is
    rejected (a completion the verifier refuses, twice)."""
    tmp_path = tmp_path_factory.mktemp("partitions")
    records = face_records(faces, 9)
    plan = {r["id"]: [r["description"]] for r in records}
    plan[records[4]["id"]] = ["<think>calm</think><answer>maybe</answer>"]
    replay = write_replay(tmp_path / "replay.jsonl", plan)
    out = out_location(request.param, tmp_path)
    cfg = synth_config(input=str(subset_jsonl(faces, tmp_path / "in", 9)), image_root=str(faces), out=out,
                       partition_size=3, max_retries=0,
                       generation={"backend": "replay", "replay_path": str(replay), "batch_size": 3})
    assert run_synth(cfg)["accepted"] == 8
    return out


def _accepted_ids(out: str, partition: int) -> list[str]:
    commit = next(c for c in read_commits(out) if c.partition == partition)
    shard = next(s for s in commit.shards if s.kind == "accepted" and s.format == "parquet")
    return [row["id"] for row in shards.iter_parquet_rows(resolve_shard_uri(out, shard.uri))]


def _ids(rows: list[dict]) -> list[str]:
    return [row["sample_id"] for row in rows]


def test_a_recorded_partition_set_is_read_exactly_and_in_its_order(output):
    dataset, stats = build_dataset([DataSource(uri=output, partitions=["part-00002", "part-00000"])], "grpo")
    rows = list(dataset)
    assert _ids(rows) == _accepted_ids(output, 2) + _accepted_ids(output, 0)
    assert stats.as_dict()["sources"][0]["partitions"] == ["part-00002", "part-00000"]
    everything, stats = build_dataset([DataSource(uri=output)], "grpo")
    assert len(list(everything)) == 8
    assert stats.as_dict()["sources"][0]["partitions"] == ["part-00000", "part-00001", "part-00002"]


def test_a_partition_that_is_not_committed_is_an_error(output):
    dataset, _ = build_dataset([DataSource(uri=output, partitions=["part-00001", "part-00007"])], "sft")
    with pytest.raises(Exception, match="partitions not committed: part-00007"):
        list(dataset)


def test_partition_ids_are_checked_by_the_config():
    for bad, message in ((["3"], "look like part-00003"), (["part-00001", "part-00001"], "listed twice")):
        with pytest.raises(ConfigError, match=message):
            load_config(SFTSection, overrides={"data": [{"uri": "x", "partitions": bad}]})
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(SFTSection, overrides={"data": [{"uri": "x", "partitions": ["part-00001"], "follow": True}]})


def test_only_training_data_is_followed(output):
    with pytest.raises(ValueError, match="not to eval_data"):
        build_dataset([DataSource(uri=output, follow=True)], "sft")


def test_partitions_and_wds_need_a_synthesis_output(faces):
    for source in (DataSource(uri=str(faces / "samples.jsonl"), partitions=["part-00000"]),
                   DataSource(uri=str(faces / "samples.jsonl"), format="wds")):
        with pytest.raises(ValueError, match="needs a synthesis output"):
            build_dataset([source], "sft")


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_tars_and_parquet_give_the_same_rows(output, stage):
    from_parquet = list(build_dataset([DataSource(uri=output, format="parquet")], stage)[0])
    from_tars = list(build_dataset([DataSource(uri=output, format="wds")], stage)[0])
    assert len(from_parquet) == 8 and from_tars == from_parquet


def test_a_changed_tar_is_refused(output):
    from engine.data.commits import ShardIntegrityError

    commit = read_commits(output)[0]
    tar = next(s for s in commit.shards if s.format == "webdataset")
    uri = resolve_shard_uri(output, tar.uri)
    original = storage.read_bytes(uri)
    storage.write_bytes(uri, original + bytes(512))  # still a readable tar, but not the committed bytes
    try:
        with pytest.raises(ShardIntegrityError, match="differs from its commit record"):
            list(build_dataset([DataSource(uri=output, format="wds")], "sft")[0])
    finally:
        storage.write_bytes(uri, original)
