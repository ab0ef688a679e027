"""`fea watch` on real parts: synthesis jobs (replay backend, local Ray) commit partitions, the watcher
fires, and its retraining (`fea train sft` in a subprocess, real TRL on the tiny model) trains on
exactly the partitions its trigger record names. Restarted watchers read their state back from
those records: an interrupted retraining is finished on its recorded partitions, the same data never
fires twice, more data fires again."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from engine.cli import main as cli
from engine.core.config import SynthConfig
from engine.data import storage
from engine.synth.job import run_synth
from engine.loop.watch import TRIGGERS, Watch, claim_next, read_records, record_uri
from tests.support.processes import kill_driver_and_children

SFT = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
       "max_steps": 2, "per_device_train_batch_size": 8, "precision": "fp32", "shuffle_buffer": 0,
       "save_steps": 1, "logging_steps": 1, "report_to": ["none"], "prompt_style": "compact"}


# ---------------------------------------------------------------- helpers
def synthesize(faces: Path, folder: Path, out: str, first: int, last: int) -> dict:
    """Faces [first, last) through a replay job into `out` (every sample accepted, 4 per partition).
    The input file is rewritten in place, so a longer range adds partitions to the same job."""
    records = [json.loads(line) for line in (faces / "samples.jsonl").read_text().splitlines()[first:last]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "replay.jsonl").write_text("".join(
        json.dumps({"sample_id": r["id"], "attempt": 0, "completion": r["description"]}) + "\n" for r in records))
    cfg = SynthConfig.model_validate({
        "input": str(folder / "samples.jsonl"), "image_root": str(faces), "out": out, "partition_size": 4,
        "max_retries": 0, "progress": "off",
        "generation": {"backend": "replay", "replay_path": str(folder / "replay.jsonl"), "batch_size": 4}})
    summary = run_synth(cfg)
    assert summary["accepted"] == summary["inputs"], summary
    return summary


def sft_config(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({"sft": {**SFT, "model": {"path": str(model)}}}))
    return path


def watch_argv(data: list[str], config: Path, out: str, min_new: int, *extra: str) -> list[str]:
    return ["watch", "--data", *data, "--config", str(config), "--out", out, "--min-new", str(min_new), *extra]


def watch_once(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert cli.main([*argv, "--once"]) == 0
    return json.loads(capsys.readouterr().out)


def record(out: str, folder: str, number: int) -> dict:
    return json.loads(storage.read_text(record_uri(out, folder, number)))


def trained_config(local: Path) -> dict:
    """The sft section the retraining ran with (the trainer writes it into its folder)."""
    return yaml.safe_load((local / "sft-config.yaml").read_text())


def wait_for(probe, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(every)
    raise TimeoutError("condition not reached")


def recorded_partitions(trigger: dict) -> dict[str, list[str]]:
    return {source["uri"]: source["partitions"] for source in trigger["sources"]}


# ---------------------------------------------------------------- local disk
def test_watch_fires_retrains_on_recorded_partitions_and_survives_restarts(ray_local, faces, tiny_model, tmp_path,
                                                                          capsys):
    a, b, out = str(tmp_path / "synth-a"), str(tmp_path / "synth-b"), str(tmp_path / "watch")
    config = sft_config(tmp_path, tiny_model)
    synthesize(faces, tmp_path / "in-a", a, 0, 8)  # partitions 0, 1: 8 accepted

    # A foreground watcher fires once the threshold is crossed; it dies before its retraining is done.
    argv = watch_argv([a, b], config, out, 6, "--poll", "0.5")  # b: nothing committed there yet
    watcher = subprocess.Popen([sys.executable, "-m", "engine.cli", *argv], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: storage.exists(record_uri(out, TRIGGERS, 1)), timeout=120)
    finally:
        kill_driver_and_children(watcher.pid)
        watcher.wait(timeout=30)
    first = record(out, TRIGGERS, 1)
    assert recorded_partitions(first) == {a: ["part-00000", "part-00001"]}
    assert (first["new_samples"], first["samples"]) == (8, 8)
    assert first["model_from"]["path"] == str(tiny_model) and first["model_to"] == f"{out}/retrain-00001/merged"
    assert not storage.exists(record_uri(out, "results", 1))

    # More data lands in a: partitions 2, 3 (the same job, its input grown).
    synthesize(faces, tmp_path / "in-a", a, 0, 16)

    # The restarted watcher finishes trigger 1 on its recorded partitions alone, then fires trigger 2.
    done = watch_once(capsys, *watch_argv([a, b], config, out, 6))
    assert (done["resumed"], done["fired"], done["triggers"]) == ([1], [2], [1, 2])
    result = record(out, "results", 1)
    assert result["rows"] == 8, "trigger 1 trained on partitions it did not record"
    trained = trained_config(Path(out) / "retrain-00001")["data"]
    assert [(s["uri"], s["partitions"]) for s in trained] == [(a, ["part-00000", "part-00001"])]
    assert [s["partitions"] for s in result["sources"]] == [["part-00000", "part-00001"]]  # as the trainer read them
    second = record(out, TRIGGERS, 2)
    assert recorded_partitions(second) == {a: ["part-00000", "part-00001", "part-00002", "part-00003"]}
    assert (second["new_samples"], second["samples"]) == (8, 16)
    assert record(out, "results", 2)["rows"] == 16
    assert (Path(out) / "retrain-00002" / "merged" / "config.json").exists()
    assert (Path(out) / "retrain-00002" / "adapter" / "adapter_model.safetensors").exists()

    # Restarted again on the same data: nothing new, nothing fired.
    done = watch_once(capsys, *watch_argv([a, b], config, out, 6))
    assert (done["resumed"], done["fired"], done["triggers"]) == ([], [], [1, 2])


def test_two_watchers_claim_a_trigger_once(ray_local, faces, tiny_model, tmp_path):
    """Both see enough new samples at the same moment; exactly one writes trigger 1, the other counts
    again against it and finds nothing new."""
    data = str(tmp_path / "synth")
    synthesize(faces, tmp_path / "in", data, 0, 4)
    w = Watch(data=(data,), min_new=2, config_path=str(sft_config(tmp_path, tiny_model)), out=str(tmp_path / "watch"),
              work_dir=str(tmp_path / "work"))
    claims: list = []
    start = threading.Barrier(2)

    def claim() -> None:
        start.wait()
        claims.append(claim_next(w))

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(c is None for c in claims) == [False, True]
    assert list(read_records(w.out, TRIGGERS)) == [1]


def test_bad_watch_input_is_one_line_and_exit_2(tiny_model, tmp_path, capsys):
    config = sft_config(tmp_path, tiny_model)
    no_sft = tmp_path / "grpo-only.yaml"
    no_sft.write_text("grpo: {}\n")
    cases = {
        "--min-new must be positive": watch_argv([str(tmp_path)], config, str(tmp_path / "w"), 0),
        "unsupported scheme 'ftp://'": watch_argv(["ftp://host/x"], config, str(tmp_path / "w"), 5),
        "no top-level section 'sft'": watch_argv([str(tmp_path)], no_sft, str(tmp_path / "w"), 5),
        "not a folder": watch_argv([str(config)], config, str(tmp_path / "w"), 5),
    }
    for expected, argv in cases.items():
        capsys.readouterr()
        assert cli.main([*argv, "--once"]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert err.startswith("fea watch: error:") and expected in err and "\n" not in err, err


# ---------------------------------------------------------------- SeaweedFS
@pytest.mark.s3
def test_watch_on_s3(ray_local, faces, tiny_model, tmp_path, capsys):
    """Watched prefixes, trigger records and the retrained model all on S3."""
    root = f"s3://fea-test/watch-{uuid.uuid4().hex[:8]}"
    a, b, out = f"{root}/synth-a", f"{root}/synth-b", f"{root}/watch"
    config = sft_config(tmp_path, tiny_model)
    argv = watch_argv([a, b], config, out, 4, "--work-dir", str(tmp_path / "work"))
    synthesize(faces, tmp_path / "in-a", a, 0, 4)
    synthesize(faces, tmp_path / "in-b", b, 4, 8)

    done = watch_once(capsys, *argv)
    assert (done["resumed"], done["fired"]) == ([], [1])
    assert recorded_partitions(record(out, TRIGGERS, 1)) == {a: ["part-00000"], b: ["part-00000"]}
    assert record(out, "results", 1)["rows"] == 8
    assert storage.exists(f"{out}/retrain-00001/merged/config.json")
    assert storage.exists(f"{out}/retrain-00001/summary.json")

    synthesize(faces, tmp_path / "in-b", b, 4, 10)  # 2 more: below --min-new
    done = watch_once(capsys, *argv)
    assert (done["resumed"], done["fired"], done["triggers"]) == ([], [], [1])
