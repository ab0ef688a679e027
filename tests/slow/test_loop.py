"""The self-improvement loop end to end: `fea demo` (the embedded default), and resume after kills.

Real parts throughout: the tiny model trained by TRL, a private local Ray, generator/filter/writer
actors, shards on disk. The resume test synthesises with the `replay` backend so that the accepted
set is known in advance (the random tiny model is almost never accepted): even pool samples replay
their reference reasoning (accepted), odd ones replay a wrong answer (rejected after every retry).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine.data import storage
from engine.demo.runner import DemoSize, _demo_faces
from tests.support.processes import kill_driver_and_children

pytestmark = pytest.mark.slow
# Each test's pytest timeout (the suite's default is 900 s) stays above the sum of its own phase
# timeouts, so a stuck phase fails with its output and its processes killed, not by pytest-timeout.

FEA = [sys.executable, "-m", "engine.cli"]
STEPS = ("sft_seed", "grpo", "synth", "retrain", "eval")


def step_record(run: str | Path, index: int, step: str) -> dict:
    return json.loads(storage.read_text(storage.join(run, f"round-{index:02d}", step, "step.json")))


def accepted_ids(synth_out: str) -> list[str]:
    from engine.data.dataset import iter_samples

    return [s.id for s in iter_samples(synth_out)]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_round_accounting(run: str | Path, rounds: int, seed: int, pool: list[dict], test: list[dict],
                           pool_per_round: int | None = None) -> None:
    """Every pool sample reached so far is synthesised until accepted, exactly once accepted, and never
    twice; each retraining sees the seed set plus every sample accepted so far."""
    seen: list[str] = []
    for index in range(rounds):
        synth = step_record(run, index, "synth")
        summary = synth["summary"]
        reached = pool[:(index + 1) * pool_per_round] if pool_per_round else pool
        assert summary["inputs"] == len(reached) - len(seen)  # what earlier rounds accepted is not redone
        assert summary["accepted"] + summary["rejected"] + summary["quarantined"] == summary["inputs"]
        ids = accepted_ids(synth["out"])
        assert len(ids) == summary["accepted"] and set(ids) <= {r["id"] for r in reached}
        assert not set(ids) & set(seen)
        seen += ids
        retrain = step_record(run, index, "retrain")
        assert retrain["train"]["data"]["rows"] == seed + len(seen)
        metrics = step_record(run, index, "eval")["metrics"]
        assert metrics["n"] == len(test)
        assert storage.exists(storage.join(retrain["model"], "config.json"))
        # lineage: each step's resolved config, the synthesis job record, the evaluation report
        for step in ("grpo", "retrain", "eval"):
            assert storage.exists(storage.join(run, f"round-{index:02d}", step, "config.yaml"))
        assert storage.exists(storage.join(synth["out"], "job.json"))
        assert storage.exists(storage.join(synth["out"], "summary.json"))
        assert storage.exists(storage.join(run, f"round-{index:02d}", "eval", "report.md"))
    assert len(seen) == len(set(seen))


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The process's output once it ends successfully; past `timeout` it is killed with every process
    it started (its Ray included) and the test fails with the end of its output."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_driver_and_children(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(proc.args)} still running after {timeout:.0f} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.timeout(1800)
def test_demo_learns_from_synthesis_beside_its_control_arm(tmp_path):
    """`fea demo` as shipped: every stage is evaluated on held-out faces from their own seed, the
    control arm trains as long on the seed set alone, and the loop's final model is clearly better
    than both the seed SFT it started from and the control arm (non-overlapping 95% intervals), in
    this same run, with acceptance holding up from round to round. The figures are the run's; none
    is a constant of the test."""
    out = tmp_path / "demo"
    output = finish(start([*FEA, "demo", "--out", str(out)]), timeout=1500)
    run = out / "run"
    report = run / "report.md"
    assert f"report: {report}" in output
    pool, test = jsonl(out / "faces" / "train" / "pool.jsonl"), jsonl(out / "faces" / "test" / "test.jsonl")
    assert len(pool) == 2880 and len(test) == 300
    train_ids = {r["id"] for r in jsonl(out / "faces" / "train" / "samples.jsonl")}
    assert not train_ids & {r["id"] for r in test}  # disjoint seed streams
    check_round_accounting(run, 2, 48, pool, test, pool_per_round=1440)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_n"] == len(test)
    assert [s["name"] for s in summary["stages"]] == ["base", "sft_seed", "grpo-00", "retrain-00", "grpo-01",
                                                      "retrain-01"]
    final, control = summary["final"], summary["control"]
    assert final["name"] == "retrain-01" and control["name"] == "control"
    for row in (*summary["stages"], control):
        lo, hi = row["emotion_accuracy_ci95"]
        assert lo <= row["emotion_accuracy"] <= hi
    # the control arm trained at least as many optimizer steps as the final model
    control_steps = json.loads((run / "control" / "sft" / "step.json").read_text())["train"]["global_step"]
    loop_steps = sum(step_record(run, i, name)["train"]["global_step"] for i in range(2)
                     for name in ("sft_seed", "grpo", "retrain") if (i, name) != (1, "sft_seed"))
    assert control_steps >= loop_steps
    seed_sft = summary["stages"][1]
    assert final["emotion_accuracy_ci95"][0] > seed_sft["emotion_accuracy_ci95"][1], (final, seed_sft)
    assert final["emotion_accuracy_ci95"][0] > control["emotion_accuracy_ci95"][1], (final, control)
    acceptance = [row["acceptance"] for row in summary["synthesis"]]
    assert acceptance[0] > 0 and acceptance[1] >= 0.5 * acceptance[0], acceptance
    for plot in ("stage_accuracy", "stage_au_f1", "final_confusion", "final_per_au_f1"):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 1000
    assert len(list((run / "gallery").glob("*.png"))) >= 6
    print(f"demo: final {final['emotion_accuracy']:.3f} vs control {control['emotion_accuracy']:.3f}, "
          f"wall {summary['wall_seconds']:.0f}s")


# ---------------------------------------------------------------- resume
MINI_LOOP = {
    "rounds": 2, "patience": 2, "prompt_style": "compact",
    "sft": {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "num_train_epochs": 1,
            "per_device_train_batch_size": 1, "learning_rate": 1e-3, "precision": "fp32", "save_steps": 1,
            "logging_steps": 1, "report_to": ["none"]},
    "grpo": {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "max_steps": 2,
             "per_device_train_batch_size": 2, "num_generations": 2, "max_completion_length": 8,
             "precision": "fp32", "save_steps": 1, "logging_steps": 1, "report_to": ["none"]},
    "synth": {"generators": 1, "max_retries": 1, "partition_size": 4, "progress": "log",
              "generation": {"backend": "replay", "batch_size": 4}},
    "eval": {"generation": {"backend": "hf", "max_new_tokens": 8, "batch_size": 8}},
}


def write_replay_store(faces: Path, pool: list[dict], max_retries: int) -> Path:
    references = {r["id"]: r["description"] for r in jsonl(faces / "train" / "samples.jsonl")}
    rows = []
    for position, record in enumerate(pool):
        for attempt in range(max_retries + 1):
            good = position % 2 == 0
            completion = references[record["id"]] if good else "<think>A face.</think><answer>none</answer>"
            rows.append({"sample_id": record["id"], "attempt": attempt, "completion": completion})
    path = faces.parent / "replay.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MINI_DEMO = DemoSize(seed=6, pool=12, test=8, perception_steps=0)


def start_demo(out: Path, config: Path) -> subprocess.Popen:
    return start([*FEA, "demo", "--out", str(out), "--seed-size", str(MINI_DEMO.seed), "--pool", str(MINI_DEMO.pool),
                  "--test", str(MINI_DEMO.test), "--perception-steps", "0", "--config", str(config)])


def kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the loop ended before the kill point:\n{proc.stdout.read()[-3000:]}"
        if time.monotonic() > deadline:
            kill_driver_and_children(proc.pid)
            pytest.fail(f"kill point not reached in {timeout:.0f} s:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    kill_driver_and_children(proc.pid)  # the driver and the Ray it started, like a lost node
    proc.wait(60)


@pytest.mark.timeout(3000)  # phases: 600 + 600 + 900 + 600 s at most
def test_loop_resumes_after_kills_between_and_inside_steps(tmp_path):
    out = tmp_path / "mini"
    faces = out / "faces"
    splits = _demo_faces(out, MINI_DEMO)  # what the demo itself writes, so the replay store can be made first
    pool, test = jsonl(Path(splits["pool"])), jsonl(Path(splits["test"]))
    loop = json.loads(json.dumps(MINI_LOOP))
    loop["synth"]["generation"]["replay_path"] = str(write_replay_store(faces, pool, max_retries=1))
    config = tmp_path / "mini.yaml"
    config.write_text(yaml.safe_dump({"loop": loop}))
    run = out / "run"

    # 1. killed between steps: right after the seed SFT was recorded
    kill_when(start_demo(out, config), lambda: (run / "round-00" / "sft_seed" / "step.json").exists())
    seed_record = (run / "round-00" / "sft_seed" / "step.json").read_bytes()

    # 2. killed inside a step: round 0's retraining, once it has saved a checkpoint
    retrain = run / "round-00" / "retrain"
    kill_when(start_demo(out, config), lambda: any(retrain.glob("checkpoint-*/trainer_state.json")))
    assert not (retrain / "step.json").exists()
    commits = run / "round-00" / "synth" / "out" / "commits"
    first_commits = {p.name: p.read_bytes() for p in commits.glob("*.json")}
    assert first_commits  # synthesis finished before the kill; its commits must survive the rerun

    # 3. the same command again finishes the run, keeping what was done
    finish(start_demo(out, config), timeout=900)
    assert (run / "round-00" / "sft_seed" / "step.json").read_bytes() == seed_record
    assert {p.name: p.read_bytes() for p in commits.glob("*.json")} == first_commits
    assert step_record(run, 0, "retrain")["train"]["resumed_from_step"] > 0  # continued, not restarted
    check_round_accounting(run, 2, 6, pool, test)
    expected = {r["id"] for position, r in enumerate(pool) if position % 2 == 0}
    assert set(accepted_ids(step_record(run, 0, "synth")["out"])) == expected
    assert step_record(run, 1, "synth")["summary"]["accepted"] == 0

    # 4. and once more: nothing left to do, nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in run.rglob("step.json")}
    finish(start_demo(out, config), timeout=600)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("step.json")} == before


# ---------------------------------------------------------------- a run folder on object storage
@pytest.mark.s3
@pytest.mark.timeout(1800)  # phases: 900 + 600 s at most
def test_loop_keeps_its_run_folder_on_s3_and_resumes_there(s3, tiny_model, tmp_path):
    """`out` on the S3 server: step records, shards, models and the report land there, with no
    credential in any of them; a rerun with --resume finds every step done and rewrites nothing."""
    import uuid

    faces = tmp_path / "faces"
    splits = _demo_faces(tmp_path, MINI_DEMO)
    pool, test = jsonl(Path(splits["pool"])), jsonl(Path(splits["test"]))
    loop = json.loads(json.dumps(MINI_LOOP))
    loop["synth"]["generation"]["replay_path"] = str(write_replay_store(faces, pool, max_retries=1))
    out = f"s3://fea-test/loop-{uuid.uuid4().hex[:10]}"
    loop.update(out=out, work_dir=str(tmp_path / "work"), base_model={"path": str(tiny_model)},
                seed_data=[splits["seed"]], pool=splits["pool"], test=splits["test"])
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({"loop": loop}))

    output = finish(start([*FEA, "loop", "--config", str(config)]), timeout=900)

    check_round_accounting(out, 2, 6, pool, test)
    assert all(step_record(out, index, "synth")["out"].startswith(out) for index in range(2))
    expected = {r["id"] for position, r in enumerate(pool) if position % 2 == 0}
    assert set(accepted_ids(step_record(out, 0, "synth")["out"])) == expected
    assert step_record(out, 1, "synth")["summary"]["accepted"] == 0
    assert storage.exists(f"{out}/report.md")
    written = storage.list_files(out, recursive=True)
    secrets = [s3.env()["AWS_SECRET_ACCESS_KEY"], s3.env()["AWS_ACCESS_KEY_ID"]]
    for uri in written:
        if uri.endswith((".json", ".yaml", ".md", ".jsonl")):
            text = storage.read_text(uri)
            assert not any(secret in text for secret in secrets), uri
    assert not any(secret in output for secret in secrets)

    steps = {uri: storage.read_bytes(uri) for uri in written if uri.endswith("step.json")}
    finish(start([*FEA, "loop", "--config", str(config), "--resume"]), timeout=600)
    assert {uri: storage.read_bytes(uri) for uri in steps} == steps
    assert sorted(u for u in storage.list_files(out, recursive=True) if u.endswith("step.json")) == sorted(steps)
