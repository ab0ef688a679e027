"""Every shipped YAML with a `loop:` section loads into LoopConfig, headed by its launch command."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.core.config import ConfigError, LoopConfig, ModelConfig, load_config
from engine.loop import _round_model, held_out_score
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
