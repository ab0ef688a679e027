"""Faults during a synthesis job, each really caused: an actor process SIGKILLed, the writer killed
between its shards and its commit, the driver SIGKILLed with S3 output, a full disk (a small tmpfs)
during shard writes and during the commit write. Every test ends with every input exactly once in
the committed output and every committed shard matching the sha256 of its commit record."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from engine.core.types import sha256_hex
from engine.data.commits import commits_dir, committed_shard_uris, read_commits, resolve_shard_uri
from engine.data import shards, storage
from engine.synth.job import run_synth
from tests.support.processes import kill_driver_and_children

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- helpers
def subset(faces: Path, folder: Path, n: int) -> tuple[Path, list[dict]]:
    folder.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in (faces / "samples.jsonl").read_text().splitlines()[:n]]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "samples.jsonl", records


def assert_exactly_once_and_intact(out: str, ids: list[str]) -> list[dict]:
    """Every input once in accepted + rejected; every committed shard's bytes as its commit says.
    Returns the rejected rows."""
    commits = read_commits(out)
    assert sum(c.inputs for c in commits) == len(ids)
    for commit in commits:
        for shard in commit.shards:
            data = storage.read_bytes(resolve_shard_uri(out, shard.uri))
            assert sha256_hex(data) == shard.sha256, f"{shard.uri} differs from its commit record"
    rows = {kind: [row for uri in committed_shard_uris(out, kind, "parquet")
                   for row in shards.iter_parquet_rows(uri)] for kind in ("accepted", "rejected")}
    produced = [row["id"] for kind in rows for row in rows[kind]]
    assert sorted(produced) == sorted(ids), "an input is missing or appears twice"
    return rows["rejected"]


def wait_for(probe, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def commit_count(out: str) -> int:
    return len(storage.list_files(commits_dir(out), ".json"))


def actor_processes(title: str) -> list[psutil.Process]:
    """This test process's Ray workers whose process title starts with `title` (e.g. ray::FilterActor)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith(title) or " ".join(process.cmdline()).startswith(title):
                found.append(process)
        except psutil.Error:
            continue
    return found


# ---------------------------------------------------------------- an actor process dies
@pytest.mark.parametrize("actor", ["GeneratorActor", "FilterActor"])
def test_an_actor_process_killed_mid_job(actor, ray_local, tiny_model, faces, tmp_path, caplog):
    """SIGKILL a generator's or a filter's worker process mid-job: Ray restarts it, the lost requests are
    re-queued with their attempt numbers, and each rejected sample keeps exactly max_retries + 1 attempts."""
    jsonl, records = subset(faces, tmp_path / "in", 16)
    out = str(tmp_path / "out")
    max_retries = 2
    from engine.core.config import SynthConfig

    cfg = SynthConfig.model_validate({
        "input": str(jsonl), "image_root": str(faces), "out": out, "model": {"path": str(tiny_model)},
        # partitions of 2: the first commit comes early, while most samples are still in flight, so the
        # kill always finds calls to lose (a filter is idle between batches, and killed idle it loses none)
        "partition_size": 2, "max_retries": max_retries, "job_id": f"{actor.lower()}-{uuid.uuid4().hex[:6]}",
        "progress": "off", "generation": {"backend": "hf", "max_new_tokens": 24, "batch_size": 2}})
    caplog.set_level(logging.WARNING, logger="engine.synth.job")
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_synth(cfg)))
    job.start()
    wait_for(lambda: commit_count(out) or None, timeout=300)
    victims = wait_for(lambda: actor_processes(f"ray::{actor}"), timeout=30)
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    job.join(timeout=600)

    assert "summary" in result, "the job did not finish after the actor was killed"
    assert commit_count(out) == 8 and "re-queued" in caplog.text
    rejected = assert_exactly_once_and_intact(out, [r["id"] for r in records])
    for row in rejected:
        numbers = [a["attempt"] for a in row["attempts"]]
        assert numbers == list(range(max_retries + 1)), f"{row['id']}: attempts {numbers}"


# ---------------------------------------------------------------- the writer dies before its commit
def _replay_file(path: Path, records: list[dict], rejected_every: int = 3) -> Path:
    """Stored completions: most samples pass at once; every third never passes (two stored failures)."""
    bad = "<think>The face looks calm.</think><answer>maybe</answer>"
    with path.open("w") as f:
        for i, record in enumerate(records):
            completions = [bad, bad] if i % rejected_every == 0 else [record["description"]]
            for attempt, completion in enumerate(completions):
                f.write(json.dumps({"sample_id": record["id"], "attempt": attempt, "completion": completion}) + "\n")
    return path


def _replay_command(faces: Path, jsonl: Path, replay: Path, out: str) -> list[str]:
    return [str(VENV_BIN / "fea"), "synth", "--input", str(jsonl), "--image-root", str(faces), "--out", out,
            "--backend", "replay", "--replay-path", str(replay), "--partition-size", "3", "--batch-size", "3",
            "--max-retries", "1", "--progress", "off"]


def test_writer_killed_between_its_shards_and_the_commit(faces, tmp_path):
    jsonl, records = subset(faces, tmp_path / "in", 12)
    replay = _replay_file(tmp_path / "replay.jsonl", records)
    out = str(tmp_path / "out")
    marker = tmp_path / "writer-killed"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["FEA_FAILPOINT"] = f"before-commit:{marker}"
    done = subprocess.run(_replay_command(faces, jsonl, replay, out), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists(), "the writer was never killed"
    assert "writer died on partition" in done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{\n"):])  # Ray reports the dead worker before it
    assert summary["inputs"] == 12 and summary["rejected"] == 4
    assert_exactly_once_and_intact(out, [r["id"] for r in records])


# ---------------------------------------------------------------- the driver dies, output on S3
@pytest.mark.s3
@pytest.mark.slow
def test_driver_sigkill_with_s3_output_then_rerun(s3, tiny_model, faces, tmp_path):
    jsonl, records = subset(faces, tmp_path / "in", 16)
    out = f"s3://fea-test/driver-kill-{uuid.uuid4().hex[:8]}"
    command = [str(VENV_BIN / "fea"), "synth", "--input", str(jsonl), "--image-root", str(faces), "--out", out,
               "--model", str(tiny_model), "--backend", "hf", "--partition-size", "2", "--batch-size", "2",
               "--max-retries", "1", "--max-new-tokens", "16", "--progress", "off"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: commit_count(out) or driver.poll() is not None, timeout=300, every=0.2)
    finally:
        kill_driver_and_children(driver.pid)
        driver.wait(timeout=30)
    before = {uri: storage.read_bytes(uri) for uri in storage.list_files(commits_dir(out))}
    assert 1 <= len(before) < 8, f"the kill should land mid-job, found {len(before)} commits of 8"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # the dead driver's lease is taken over at once
    assert all(storage.read_bytes(uri) == data for uri, data in before.items()), "a commit was rewritten"
    assert json.loads(rerun.stdout)["run"]["partitions"] == 8 - len(before)
    assert_exactly_once_and_intact(out, [r["id"] for r in records])


# ---------------------------------------------------------------- a full disk
def test_a_full_disk_during_shard_writes_and_during_the_commit(tmp_path):
    """A real tmpfs (private mount namespace) too small for the shards, then just big enough for the
    shards but not the commit: the write fails with ENOSPC and nothing is committed; once there is
    room, writing the partition again commits it exactly once, with intact shards."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine allows no private mount namespace (unshare -rm)")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(["unshare", "-rm", sys.executable, "-m", "tests.support.full_disk", str(mountpoint)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    committed = ["accepted/part-00000.parquet", "accepted/part-00000.tar", "commits/part-00000.json",
                 "rejected/part-00000.parquet"]
    for phase in ("during_shards", "during_commit"):
        seen = report[phase]
        assert seen["small"]["error"] == "ENOSPC", seen
        failed = seen["after_failure"]
        assert failed["commits"] == 0 and not [f for f in failed["files"] if f.startswith("commits/") or ".tmp-" in f]
        assert seen["rerun"]["error"] is None
        assert seen["after_rerun"] == {"files": committed, "commits": 1, "inputs": 8, "intact": True}
    # the second phase really failed at the commit: every shard had been written
    assert report["during_commit"]["after_failure"]["files"] == [f for f in committed if not f.startswith("commits/")]


# ---------------------------------------------------------------- GRPO killed, then resumed
GRPO_STEPS = 8
GRPO_CONFIG = {"grpo": {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "learning_rate": 1.0e-4, "max_steps": GRPO_STEPS, "per_device_train_batch_size": 4, "num_generations": 4,
    "max_completion_length": 8, "precision": "fp32", "shuffle_buffer": 0, "save_steps": 2, "save_total_limit": 3,
    "logging_steps": 1, "report_to": ["none"],
}}


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())


@pytest.mark.slow
def test_grpo_killed_then_resumed_continues_from_its_checkpoint(tiny_model, faces, tmp_path):
    import yaml

    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump(GRPO_CONFIG))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "engine.cli", "train", "grpo", "--config", str(config), "--data",
               str(faces / "samples.jsonl"), "--model", str(tiny_model), "--out", str(out)]
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for(lambda: _checkpoints(out) or first.poll() is not None, timeout=300, every=0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    killed_at = max(_checkpoints(out))
    assert 0 < killed_at < GRPO_STEPS and not (out / "summary.json").exists()

    second = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at and summary["global_step"] == GRPO_STEPS
    steps = [e["step"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert steps == list(range(1, GRPO_STEPS + 1)), "a step was lost or run twice"
