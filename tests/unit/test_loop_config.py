"""Every shipped YAML with a `loop:` section loads into LoopConfig, headed by its launch command."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.core.config import ConfigError, LoopConfig, ModelConfig, load_config
from engine.loop.rounds import _round_model, held_out_score
from tests.support.config_files import header, launches_itself, unheld_values

CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").glob("*.yaml")
                 if "loop" in (yaml.safe_load(p.read_text()) or {}))
DEMO_PATHS = {"out": "o", "base_model.path": "m", "seed_data": ["s.jsonl"], "pool": "p.jsonl", "test": "t.jsonl"}


def test_demo_and_gpu_loops_are_shipped():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "loop-gpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_loop_config_holds_what_its_file_says_and_says_how_to_launch(path):
    overrides = DEMO_PATHS if path.name == "demo.yaml" else {}  # `fea demo` fills the demo's paths in
    cfg = load_config(LoopConfig, path, overrides, section="loop")
    written = {k: v for k, v in yaml.safe_load(path.read_text())["loop"].items() if k not in overrides}
    assert unheld_values(cfg, written) == []
    assert ("fea demo" in header(path) or "fea loop" in header(path)) and launches_itself(path)


def test_a_loop_without_its_data_is_refused_with_the_missing_fields():
    with pytest.raises(ConfigError, match="the loop needs out, pool, test, base_model.path, seed_data"):
        load_config(LoopConfig, None, {})


def test_held_out_score_counts_a_missing_metric_as_zero():
    metrics = {"overall": {"emotion_accuracy": 0.5, "rouge_l_f": None, "au_macro_f1": 0.25}}
    assert held_out_score(metrics, "rege") == 0.5
    assert held_out_score(metrics, "au_macro_f1") == 0.25
    assert held_out_score(metrics, "rouge_l_f") == 0.0


def test_a_round_uses_its_model_with_the_section_settings_kept():
    section = ModelConfig(path="base", adapter="lora", dtype="bfloat16")
    assert ModelConfig.model_validate(_round_model(section, "round-02/merged")) == ModelConfig(
        path="round-02/merged", adapter=None, dtype="bfloat16")


LOOP_PATHS = {"out": "o", "base_model": {"path": "m"}, "seed_data": ["s.jsonl"], "pool": "p.jsonl", "test": "t.jsonl"}


def test_shared_settings_declared_once_reach_every_stage():
    cfg = LoopConfig(**LOOP_PATHS, prompt_style="compact", verifier={"policy": "paper", "au_weight": 0.5},
                     retrain={"learning_rate": 1e-3})
    assert {s.prompt_style for s in (cfg.sft, cfg.retrain, cfg.grpo, cfg.synth, cfg.eval)} == {"compact"}
    assert {(v.policy, v.au_weight) for v in (cfg.grpo.verifier, cfg.synth.verifier, cfg.eval.verifier)} == {
        ("paper", 0.5)}
    assert LoopConfig(**LOOP_PATHS, prompt_style="compact").retrain is None  # still "the sft section"


@pytest.mark.parametrize("stages, message", [
    ({"prompt_style": "compact", "sft": {"prompt_style": "full"}}, "sft.prompt_style differs from loop.prompt_style"),
    ({"verifier": {"policy": "paper"}, "synth": {"verifier": {"policy": "strict"}}},
     "synth.verifier differs from loop.verifier"),
    ({"sft": {"prompt_style": "compact"}}, r"the stages disagree on prompt_style \(sft: compact, grpo: full"),
    ({"grpo": {"verifier": {"au_weight": 0.0}}}, "the stages disagree on verifier"),
])
def test_stages_that_disagree_on_a_shared_setting_are_refused(stages, message):
    with pytest.raises(ValueError, match=message):
        LoopConfig(**LOOP_PATHS, **stages)
