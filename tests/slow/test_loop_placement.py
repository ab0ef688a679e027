"""`loop.placement` on CPU. ray: the loop's training and evaluation run as Ray work, not in the driver,
and the generator actors are gone before either starts. driver (the demo's): they run in the driver,
the control arm's included.

Real parts throughout: `fea loop` in its own process with a private local Ray, the tiny model trained
by TRL under `accelerate launch` in a Ray worker (trainer/ray_launch.py), a replay generator actor for
synthesis. Only the GPUs are absent: the steps ask Ray for CPUs where a GPU config asks for GPUs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.demo.runner import _demo_faces
from tests.slow.test_loop import FEA, MINI_DEMO, MINI_LOOP, finish, jsonl, start, step_record, write_replay_store

pytestmark = pytest.mark.slow


def placed_loop(faces_root: Path, tiny_model: Path, out: Path, placement: str, control: bool = False) -> dict:
    splits = _demo_faces(faces_root, MINI_DEMO)
    loop = json.loads(json.dumps(MINI_LOOP))
    pool = jsonl(Path(splits["pool"]))
    loop["synth"]["generation"]["replay_path"] = str(write_replay_store(faces_root / "faces", pool, max_retries=1))
    loop.update(rounds=1, evaluate_stages=False, control=control, placement=placement,
                resources={"train_cpus_per_node": 1, "eval_cpus": 1},
                out=str(out), base_model={"path": str(tiny_model)}, seed_data=[splits["seed"]],
                pool=splits["pool"], test=splits["test"])
    return loop


@pytest.mark.timeout(900)
def test_training_and_evaluation_run_as_ray_work_after_the_generators_are_gone(tiny_model, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({"loop": placed_loop(tmp_path, tiny_model, out, "ray")}))

    proc = start([*FEA, "loop", "--config", str(config)])
    finish(proc, timeout=780)
    driver = proc.pid

    synth = step_record(out, 0, "synth")
    assert synth["summary"]["accepted"] > 0  # the generator fleet existed and did its work
    for step in ("sft_seed", "grpo", "retrain"):
        where = step_record(out, 0, step)["placement"]
        assert where["kind"] == "ray" and where["driver_pid"] == driver
        (node,) = where["nodes"]
        assert node["exit_code"] == 0 and node["node_id"]
        assert len({driver, node["worker_pid"], node["launcher_pid"]}) == 3  # trained in a worker's child
    # retraining comes right after synthesis: the fleet's generator was killed before it started
    retrain = step_record(out, 0, "retrain")
    (node,) = retrain["placement"]["nodes"]
    assert "GeneratorActor" not in node["actors_alive"], node
    assert node["actors_gone"].get("GeneratorActor", 0) >= 1, node
    assert retrain["train"]["global_step"] > 0 and (Path(retrain["model"]) / "config.json").exists()

    evaluated = step_record(out, 0, "eval")
    assert evaluated["placement"]["kind"] == "ray" and evaluated["placement"]["driver_pid"] == driver
    assert evaluated["placement"]["pid"] != driver
    assert evaluated["metrics"]["n"] == MINI_DEMO.test
    assert (Path(evaluated["eval_dir"]) / "predictions.jsonl").exists()


@pytest.mark.timeout(900)
def test_driver_placement_trains_and_evaluates_in_the_driver_control_arm_included(tiny_model, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({"loop": placed_loop(tmp_path, tiny_model, out, "driver", control=True)}))

    proc = start([*FEA, "loop", "--config", str(config)])
    finish(proc, timeout=780)

    records = [step_record(out, 0, step) for step in ("sft_seed", "grpo", "retrain", "eval")]
    records += [json.loads((out / "control" / step / "step.json").read_text()) for step in ("sft", "eval")]
    for record in records:
        assert record["placement"] == {"kind": "driver", "pid": proc.pid, "node_id": record["placement"]["node_id"]}
        assert record["placement"]["node_id"]  # Ray was still up, the control arm's steps included
    assert json.loads((out / "summary.json").read_text())["control"]["name"] == "control"
