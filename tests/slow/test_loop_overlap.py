"""`loop.overlap`: a round's retraining starts once its synthesis has committed a first partition and
follows the job, after the seed data; killed mid-overlap, a rerun finishes both with every partition
trained on once.

Real parts throughout: `fea loop` in its own process with a private local Ray, replay generator,
filter and writer actors, TRL on the tiny model in the driver. The writer actor is held (SIGSTOP)
once the first partition is committed, so the job cannot finish while the test waits for the
retraining's first optimizer step: the overlap is observed, not left to timing. (The replay generator
runs far ahead of the writer, so it is the writer that holds the job; one face per partition and a
pool of many faces leave most partitions to commit after the hold.)
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import yaml

from engine.data.commits import read_commits
from engine.demo.runner import DemoSize, _demo_faces
from tests.slow.test_loop import FEA, MINI_LOOP, finish, jsonl, start, step_record, write_replay_store
from tests.support.processes import kill_driver_and_children

pytestmark = pytest.mark.slow
SIZE = DemoSize(seed=6, pool=120, test=8, perception_steps=0)
# Rows per optimizer step. The trainer fetches one batch ahead of the step it runs, so the seed rows
# (three batches) let the retraining take its first steps while the job is held.
BATCH = 2


def overlap_loop(root: Path, tiny_model: Path, out: Path) -> dict:
    splits = _demo_faces(root, SIZE)
    loop = json.loads(json.dumps(MINI_LOOP))
    pool = jsonl(Path(splits["pool"]))
    loop["synth"]["generation"]["replay_path"] = str(write_replay_store(root / "faces", pool, max_retries=1))
    loop["synth"]["generation"]["batch_size"] = 1
    loop["synth"]["partition_size"] = 1
    loop["sft"]["per_device_train_batch_size"] = BATCH
    loop.update(rounds=1, evaluate_stages=False, control=False, overlap=True, out=str(out),
                base_model={"path": str(tiny_model)}, seed_data=[splits["seed"]], pool=splits["pool"],
                test=splits["test"])
    return loop


def wait_until(ready, proc, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_driver_and_children(proc.pid)
            pytest.fail(f"{what} not seen in {timeout:.0f} s:\n{proc.communicate()[0][-4000:]}")
        time.sleep(every)
    return found


def writer_actor(driver: int) -> psutil.Process | None:
    """The loop's writer actor: a process of the Ray that the loop started (not anyone else's)."""
    for child in psutil.Process(driver).children(recursive=True):
        try:
            if "WriterActor" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def trained_step(folder: Path, step: int) -> float | None:
    """When the training's checkpoint of `step` was complete (its trainer_state.json is written last)."""
    state = folder / f"checkpoint-{step}" / "trainer_state.json"
    return state.stat().st_mtime if state.exists() else None


@pytest.mark.timeout(2100)  # phases: 900 + 900 s at most
def test_retraining_follows_the_rounds_synthesis_and_resumes_mid_overlap(tiny_model, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({"loop": overlap_loop(tmp_path, tiny_model, out)}))
    synth_out = out / "round-00" / "synth" / "out"
    retrain = out / "round-00" / "retrain"

    # 1. hold the job after its first commit; the retraining trains meanwhile; then kill the loop.
    proc = start([*FEA, "loop", "--config", str(config)])
    writer = wait_until(lambda: writer_actor(proc.pid), proc, 900, "the writer actor")
    commits_dir = synth_out / "commits"
    wait_until(lambda: commits_dir.is_dir() and any(commits_dir.glob("*.json")), proc, 300, "a first commit",
               every=0.002)  # commits come tens of milliseconds apart
    writer.send_signal(signal.SIGSTOP)
    first_step_at = wait_until(lambda: trained_step(retrain, 1), proc, 600, "the retraining's first step")
    assert not (synth_out / "summary.json").exists()
    held_commits = len(read_commits(str(synth_out)))
    assert held_commits < SIZE.pool  # the job is not done while the retraining trains
    kill_driver_and_children(proc.pid)  # the driver, its Ray and the held writer with it
    proc.wait(60)
    assert not (retrain / "step.json").exists() and not (out / "round-00" / "synth" / "step.json").exists()

    # 2. the same command with --resume finishes the synthesis and the retraining, and the round.
    finish(start([*FEA, "loop", "--config", str(config), "--resume"]), timeout=900)
    synth = step_record(out, 0, "synth")
    record = step_record(out, 0, "retrain")
    summary_at = (synth_out / "summary.json").stat().st_mtime
    assert first_step_at < summary_at  # the retraining trained before the job's summary was written
    assert record["overlap"]["followed"] == str(synth_out)

    commits = read_commits(str(synth_out))
    assert len(commits) == SIZE.pool > held_commits
    accepted = {f"part-{c.partition:05d}": c.accepted for c in commits}
    assert synth["summary"]["accepted"] == sum(accepted.values()) > 0

    train = record["train"]
    assert train["resumed_from_step"] > 0  # continued from its checkpoint, not restarted
    seed_source, live = train["data"]["sources"]
    assert seed_source["rows"] == SIZE.seed
    assert live["uri"] == str(synth_out)
    assert len(live["partitions"]) == len(set(live["partitions"])), "a partition was fed twice"
    assert sorted(live["partitions"]) == sorted(accepted), "a committed partition was left out"
    assert live["rows"] == sum(accepted.values())
    assert live["follow"] == {"partial_partition": None, "job_finished": True, "timed_out": False}
    assert live["lead_rows_trained"] == SIZE.seed
    # the seed rows come first, then the partitions in the order fed: each starts where the last ended
    row = SIZE.seed
    for pid in live["partitions"]:
        assert live["started_at_step"][pid] == row // BATCH + 1, pid
        row += accepted[pid]
    assert train["global_step"] == math.ceil((SIZE.seed + sum(accepted.values())) / BATCH)
    assert train["data"]["rows"] == SIZE.seed + sum(accepted.values())
    steps = [e["step"] for e in json.loads((retrain / "log_history.json").read_text()) if "loss" in e]
    assert steps == list(range(1, train["global_step"] + 1)), "a step was lost or run twice"
    assert step_record(out, 0, "eval")["metrics"]["n"] == SIZE.test
    assert os.path.exists(Path(record["model"]) / "config.json")
