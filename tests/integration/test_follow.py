"""`fea train sft --follow` beside a running `fea synth` job (replay backend, its own local Ray), on
local disk and on the SeaweedFS S3 server: the trainer trains on partitions committed after it
started, each exactly once, also when it is SIGKILLed mid-training and resumed.

The job is held (SIGSTOP of its driver, right after it has written OUT/job.json) until the trainer
reports that it waits for partitions, so every partition is committed while training runs."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from engine.data.commits import commits_dir, read_commits
from engine.data import storage
from tests.integration.test_faults import subset, wait_for
from tests.support.processes import kill_driver_and_children

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BATCH = 2  # rows per optimizer step (batch 2, no accumulation)
SFT = {"sft": {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "learning_rate": 1.0e-3, "lr_scheduler_type": "constant", "per_device_train_batch_size": BATCH,
    "precision": "fp32", "shuffle_buffer": 0, "save_steps": 1, "logging_steps": 1, "report_to": ["none"],
}}
BAD = "<think>The face looks calm.</think><answer>maybe</answer>"


def _replay(path: Path, records: list[dict], reject_every: int) -> Path:
    """Every `reject_every`-th face is rejected (no other attempt), the rest accepted at once."""
    with path.open("w") as f:
        for i, record in enumerate(records):
            completion = BAD if reject_every and i % reject_every == reject_every - 1 else record["description"]
            f.write(json.dumps({"sample_id": record["id"], "attempt": 0, "completion": completion}) + "\n")
    return path


class HeldJob:
    """A `fea synth` process stopped right after it wrote OUT/job.json, until `release()`."""

    def __init__(self, faces: Path, tmp_path: Path, out: str, n: int, partition_size: int, reject_every: int = 0):
        jsonl, self.records = subset(faces, tmp_path / "in", n)
        replay = _replay(tmp_path / "replay.jsonl", self.records, reject_every)
        command = [str(VENV_BIN / "fea"), "synth", "--input", str(jsonl), "--image-root", str(faces), "--out", out,
                   "--backend", "replay", "--replay-path", str(replay), "--partition-size", str(partition_size),
                   "--batch-size", str(partition_size), "--max-retries", "0", "--progress", "off"]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.out, self.log = out, (tmp_path / "synth.log").open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(lambda: storage.exists(storage.join(out, "job.json")) or self.process.poll() is not None, 120)
        os.kill(self.process.pid, signal.SIGSTOP)
        assert not storage.list_files(commits_dir(out)), "the job committed before it was held"

    def release(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def finish(self) -> None:
        try:
            assert self.process.wait(timeout=300) == 0, Path(self.log.name).read_text()[-3000:]
        finally:
            kill_driver_and_children(self.process.pid)  # its private Ray, should any of it be left
            self.log.close()

    def accepted_by_partition(self) -> dict[str, int]:
        return {f"part-{c.partition:05d}": c.accepted for c in read_commits(self.out)}


def _trainer(tiny_model: Path, tmp_path: Path, out: str, *extra: str) -> tuple[list[str], Path]:
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(SFT))
    train_out = tmp_path / "train"
    command = [sys.executable, "-m", "engine.cli", "train", "sft", "--config", str(config), "--data", out,
               "--model", str(tiny_model), "--out", str(train_out), "--follow", "--follow-timeout", "600", *extra]
    return command, train_out


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)


def _waiting(log: Path, process: subprocess.Popen) -> bool:
    return "waiting for the job to commit more partitions" in log.read_text() or process.poll() is not None


def _train_while_the_job_commits(command: list[str], train_out: Path, job: HeldJob, log: Path) -> dict:
    """Starts the following trainer, lets the held job commit everything once the trainer waits for
    more, and returns the trainer's summary after it ends on its own."""
    trainer = _start(command, log)
    try:
        wait_for(lambda: _waiting(log, trainer), 300, every=0.2)
        assert trainer.poll() is None, log.read_text()[-3000:]
        job.release()  # every partition is committed from here on, while the trainer runs
        job.finish()
        assert trainer.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    return json.loads((train_out / "summary.json").read_text())


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def _assert_every_partition_once(summary: dict, job: HeldJob) -> None:
    accepted = job.accepted_by_partition()
    source = summary["data"]["sources"][0]
    assert sorted(source["partitions"]) == sorted(accepted), "a partition was skipped or fed twice"
    assert len(source["partitions"]) == len(set(source["partitions"]))
    assert source["follow"] == {"partial_partition": None, "job_finished": True, "timed_out": False}
    rows = sum(accepted.values())
    assert source["rows"] == rows and summary["global_step"] == math.ceil(rows / BATCH)


def _job_location(where: str, request, tmp_path: Path) -> str:
    if where == "s3":
        request.getfixturevalue("s3")  # the server, its settings in the environment the processes inherit
        return f"s3://fea-test/follow-{uuid.uuid4().hex[:8]}"
    return str(tmp_path / "job")


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_training_follows_a_running_job(where, request, tiny_model, faces, tmp_path):
    out = _job_location(where, request, tmp_path)
    job = HeldJob(faces, tmp_path, out, n=12, partition_size=3, reject_every=4)
    command, train_out = _trainer(tiny_model, tmp_path, out)
    summary = _train_while_the_job_commits(command, train_out, job, tmp_path / "train.log")
    _assert_every_partition_once(summary, job)
    assert len(job.accepted_by_partition()) == 4
    assert (train_out / "merged" / "model.safetensors").exists()


def test_a_config_reads_its_fixed_source_first_then_follows_the_job(tiny_model, faces, tmp_path):
    """`data` lists a fixed source and a followed job: the fixed rows are trained first, then every
    partition of the job once."""
    out = str(tmp_path / "job")
    job = HeldJob(faces, tmp_path, out, n=6, partition_size=3)
    seed = str(faces / "samples.jsonl")
    config = tmp_path / "fixed-then-followed.yaml"
    config.write_text(yaml.safe_dump({"sft": {**SFT["sft"], "data": [
        {"uri": seed}, {"uri": out, "follow": True, "follow_timeout": 600}]}}))
    train_out = tmp_path / "train"
    command = [sys.executable, "-m", "engine.cli", "train", "sft", "--config", str(config),
               "--model", str(tiny_model), "--out", str(train_out)]
    summary = _train_while_the_job_commits(command, train_out, job, tmp_path / "train.log")
    fixed, followed = summary["data"]["sources"]
    seed_rows = sum(1 for line in Path(seed).read_text().splitlines() if line.strip())
    assert fixed["uri"] == seed and fixed["rows"] == seed_rows
    assert followed["lead_rows_trained"] == seed_rows
    assert sorted(followed["partitions"]) == sorted(job.accepted_by_partition()) and followed["rows"] == 6
    assert summary["global_step"] == math.ceil((seed_rows + 6) / BATCH)


def test_two_followed_sources_are_refused(tiny_model, tmp_path, capsys):
    from engine.cli.main import main

    jobs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "job.json").write_text("{}")  # what marks a synthesis output
        jobs.append(str(tmp_path / name))
    assert main(["train", "sft", "--data", *jobs, "--follow", "--model", str(tiny_model), "--out",
                 str(tmp_path / "t")]) == 2
    assert "follow one synthesis output at most" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=[pytest.mark.s3, pytest.mark.slow])])
def test_killed_then_resumed_feeds_every_partition_once(where, request, tiny_model, faces, tmp_path):
    """Partitions of 3 rows (all accepted) and steps of 2: a kill at step 1 or 2 lands inside a
    partition, which the resumed run finishes from the right row (its step count shows no row was
    trained twice or left out)."""
    out = _job_location(where, request, tmp_path)
    job = HeldJob(faces, tmp_path, out, n=16, partition_size=3)
    command, train_out = _trainer(tiny_model, tmp_path, out)
    log = tmp_path / "train.log"
    first = _start(command, log)
    try:
        wait_for(lambda: _waiting(log, first), 300, every=0.2)
        job.release()
        wait_for(lambda: _checkpoints(train_out) or first.poll() is not None, 300, every=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    killed_at = max(_checkpoints(train_out))
    position = json.loads((train_out / f"checkpoint-{killed_at}" / "follow_state.json").read_text())
    assert sum(rows for _, rows, _ in position["consumed"]) + (position["partial"] or [0, 0])[1] == killed_at * BATCH
    assert (position["partial"] is not None) == (killed_at * BATCH % 3 != 0)

    second = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600, cwd=REPO)
    job.finish()
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((train_out / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at and 0 < killed_at < summary["global_step"]
    _assert_every_partition_once(summary, job)
    steps = [e["step"] for e in json.loads((train_out / "log_history.json").read_text()) if "loss" in e]
    assert steps == list(range(1, summary["global_step"] + 1)), "a step was lost or run twice"


@pytest.mark.parametrize("flags, message", [
    ("--follow", "needs a synthesis output"),
    ("--format wds", "needs a synthesis output"),
    ("--follow-timeout 5", "--follow-timeout needs --follow"),
    ("--follow --follow-timeout 0", "follow_timeout"),
    ("--follow --config {warmup}", "warm up"),
])
def test_bad_follow_flags_are_one_line_errors(flags, message, tiny_model, faces, tmp_path, capsys):
    from engine.cli.main import main

    warmup = tmp_path / "warmup.yaml"
    warmup.write_text(yaml.safe_dump({"sft": {"warmup_ratio": 0.1}}))
    argv = ["train", "sft", "--data", str(faces / "samples.jsonl"), "--model", str(tiny_model),
            "--out", str(tmp_path / "t"), *flags.format(warmup=warmup).split()]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fea train: error: ") and message in lines[0], lines


@pytest.mark.slow
def test_grpo_follows_a_running_job(tiny_model, faces, tmp_path):
    """GRPO takes one prompt per step here (4 completions of 4 per step): every partition once."""
    out = str(tmp_path / "job")
    job = HeldJob(faces, tmp_path, out, n=6, partition_size=2)
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump({"grpo": {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8, "precision": "fp32",
        "shuffle_buffer": 0, "save_steps": 2, "logging_steps": 1, "report_to": ["none"]}}))
    train_out = tmp_path / "train"
    command = [sys.executable, "-m", "engine.cli", "train", "grpo", "--config", str(config), "--data", out,
               "--model", str(tiny_model), "--out", str(train_out), "--follow", "--format", "wds"]
    summary = _train_while_the_job_commits(command, train_out, job, tmp_path / "train.log")
    source = summary["data"]["sources"][0]
    assert sorted(source["partitions"]) == sorted(job.accepted_by_partition())
    assert source["rows"] == 6 and summary["global_step"] == 6


@pytest.mark.slow
def test_the_follow_timeout_ends_training_on_what_was_committed(tiny_model, faces, tmp_path):
    """A job that never writes its summary (here: removed after it ran, as a died driver leaves it):
    the trainer takes every committed partition, then stops at the timeout and says so."""
    out = str(tmp_path / "job")
    job = HeldJob(faces, tmp_path, out, n=6, partition_size=3)
    job.release()
    job.finish()
    storage.remove(storage.join(out, "summary.json"))
    command, train_out = _trainer(tiny_model, tmp_path, out)
    command[command.index("--follow-timeout") + 1] = "3"
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "follow timeout reached before the job finished" in done.stderr
    source = json.loads((train_out / "summary.json").read_text())["data"]["sources"][0]
    assert sorted(source["partitions"]) == ["part-00000", "part-00001"] and source["rows"] == 6
    assert source["follow"] == {"partial_partition": None, "job_finished": False, "timed_out": True}
