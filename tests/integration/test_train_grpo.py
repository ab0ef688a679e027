"""GRPO with real TRL, the real verifier rewards and the tiny model (CPU)."""
from __future__ import annotations

import json
from statistics import mean

import pytest
import yaml

from engine.backends.base import create
from engine.core.config import GenerationConfig, VerifierConfig
from engine.data.dataset import iter_samples
from engine.core.facs import label_set_for
from engine.core.prompts import make_request
from engine.core.types import CheckpointRef, SamplingParams
from engine.core.verifier import compute_scores
from trainer.rewards import read_reward_records
from trainer.run import train, training_config

STEPS = 3
GRPO = {"grpo": {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "learning_rate": 1.0e-4, "max_steps": STEPS, "per_device_train_batch_size": 4, "num_generations": 4,
    "max_completion_length": 16, "precision": "fp32", "save_steps": 100, "logging_steps": 1, "report_to": ["none"],
    "verifier": {"au_weight": 1.0, "acc_weight": 2.0, "format_weight": 0.5},
}}


@pytest.fixture(scope="module")
def grpo_run(tiny_model, faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    config = root / "grpo.yaml"
    config.write_text(yaml.safe_dump(GRPO))
    out = root / "out"
    cfg = training_config("grpo", data=[str(faces / "samples.jsonl")], model=str(tiny_model), out=str(out),
                          config_path=str(config))
    summary = train("grpo", cfg)
    return summary, out


def test_grpo_runs_and_records_every_rollout(grpo_run):
    summary, out = grpo_run
    assert summary["global_step"] == STEPS and summary["stage"] == "grpo"
    records = read_reward_records(out / "rewards.jsonl")
    assert len(records) == STEPS * 4  # one prompt x 4 generations per step
    assert sorted({r["step"] for r in records}) == list(range(STEPS))
    for step in range(STEPS):  # a group shares one prompt
        assert len({r["sample_id"] for r in records if r["step"] == step}) == 1


def test_logged_rewards_equal_the_verifier_on_the_same_completions(grpo_run):
    _, out = grpo_run
    cfg = VerifierConfig(au_weight=1.0, acc_weight=2.0, format_weight=0.5)
    records = read_reward_records(out / "rewards.jsonl")
    for r in records:
        scores = compute_scores(r["completion"], r["gold_aus"], r["gold_labels"], cfg, label_set=label_set_for(r["dataset"]))
        assert (r["au"], r["acc"], r["format"], r["total"]) == (scores.au, scores.acc, scores.format, scores.total)
    # What TRL logged per step is the mean of exactly these values, weighted as the verifier weighs them.
    logs = [e for e in json.loads((out / "log_history.json").read_text()) if "rewards/au/mean" in e]
    assert [e["step"] for e in logs] == list(range(1, STEPS + 1))
    for entry in logs:
        step_records = [r for r in records if r["step"] == entry["step"] - 1]
        for name in ("au", "acc", "format"):
            assert entry[f"rewards/{name}/mean"] == pytest.approx(mean(r[name] for r in step_records), abs=1e-6)
        assert entry["reward"] == pytest.approx(mean(r["total"] for r in step_records), abs=1e-6)


def test_grpo_model_loads_in_the_hf_backend_and_generates(grpo_run, faces):
    _, out = grpo_run
    ref = CheckpointRef.from_json((out / "checkpoint.json").read_text())
    assert ref.stage == "grpo" and (out / "adapter" / "adapter_model.safetensors").exists()
    samples = list(iter_samples(str(faces / "samples.jsonl")))[:2]
    backend = create("hf", ref.uri, None, GenerationConfig(max_new_tokens=8))
    try:
        results = backend.generate([make_request(s, 0, hint=False) for s in samples], SamplingParams(max_new_tokens=8))
    finally:
        backend.close()
    assert [len(r) for r in results] == [1, 1]
    assert all(r[0].error is None and r[0].completion_tokens > 0 for r in results)
