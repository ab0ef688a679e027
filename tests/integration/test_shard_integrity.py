"""A committed shard changed after its commit is refused by every reader: `fea export`, `fea eval`,
the trainer's reader (`fea train --data`), and the input reader of the next synthesis round."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import yaml

from engine.cli.main import main
from engine.data.commits import committed_shard_uris
from engine.data import shards, storage
from engine.data.commits import ShardIntegrityError
from engine.synth.job import run_synth
from tests.integration.test_synth import face_records, out_location, subset_jsonl, synth_config, write_replay

WHERE = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=WHERE)
def altered_output(request, ray_local, faces, tmp_path) -> str:
    """A finished synthesis output (replay backend: every sample accepted) whose first accepted Parquet
    shard then loses a row, as when a second writer overwrote it after the commit."""
    records = face_records(faces, 6)
    replay = write_replay(tmp_path / "replay.jsonl", {r["id"]: [r["description"]] for r in records})
    out = out_location(request.param, tmp_path)
    cfg = synth_config(input=str(subset_jsonl(faces, tmp_path / "in", 6)), image_root=str(faces), out=out,
                       partition_size=3, max_retries=0,
                       generation={"backend": "replay", "replay_path": str(replay), "batch_size": 3})
    assert run_synth(cfg)["accepted"] == 6
    victim = committed_shard_uris(out, "accepted", "parquet")[0]  # verified: still intact here
    table = pq.read_table(io.BytesIO(storage.read_bytes(victim)))
    storage.write_bytes(victim, shards.parquet_bytes(table.slice(0, table.num_rows - 1)))
    return out


def test_the_library_readers_refuse_it(altered_output):
    from engine.core.config import DataSource
    from engine.data.dataset import export_committed, iter_samples
    from trainer.data import build_dataset

    with pytest.raises(ShardIntegrityError, match="differs from its commit record"):
        committed_shard_uris(altered_output, "accepted", "parquet")
    with pytest.raises(ShardIntegrityError):
        list(iter_samples(altered_output))  # fea eval, the next round's input
    with pytest.raises(ShardIntegrityError):
        export_committed(altered_output, "/tmp/unused-export/x.jsonl")
    dataset, _ = build_dataset([DataSource(uri=altered_output)], "sft")
    with pytest.raises(Exception) as caught:  # the trainer's stream (fea train --data)
        next(iter(dataset))
    assert "differs from its commit record" in str(caught.value)
    # the other kinds' shards are untouched and still read
    assert committed_shard_uris(altered_output, "accepted", "webdataset")


def test_the_commands_refuse_it_in_one_line(altered_output, tmp_path, capsys):
    assert main(["export", altered_output, "--out", str(tmp_path / "export" / "accepted.jsonl")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fea export: error: ") and "commit record" in lines[0]
    assert not (tmp_path / "export" / "accepted.jsonl").exists()

    replay = tmp_path / "none.jsonl"
    replay.write_text(json.dumps({"sample_id": "x", "attempt": 0, "completion": "x"}) + "\n")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"eval": {"generation": {"backend": "replay", "replay_path": str(replay)}}}))
    assert main(["eval", "--data", altered_output, "--out", str(tmp_path / "eval"), "--config", str(config)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("fea eval: error: ") and "commit record" in lines[-1]
