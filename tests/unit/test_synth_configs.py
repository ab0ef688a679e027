"""Every shipped YAML with a `synth:` section loads into SynthConfig, and flags override it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.core.config import SynthConfig, load_config
from tests.support.config_files import header, launches_itself, unheld_values

CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").glob("*.yaml")
                 if "synth" in (yaml.safe_load(p.read_text()) or {}))


def test_there_is_a_synth_config():
    assert any(p.name == "synth-cpu.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_synth_config_holds_what_its_file_says_and_is_headed_by_its_launch_command(path):
    cfg = load_config(SynthConfig, path, section="synth")
    assert unheld_values(cfg, yaml.safe_load(path.read_text())["synth"]) == []
    assert "fea synth" in header(path) and launches_itself(path)


def test_flags_override_the_file():
    path = next(p for p in CONFIGS if p.name == "synth-cpu.yaml")
    cfg = load_config(SynthConfig, path, {"generation.backend": "vllm", "generators": 2, "job_id": None},
                      section="synth")
    base = load_config(SynthConfig, path, section="synth")
    assert (cfg.generation.backend, cfg.generators, cfg.max_retries) == ("vllm", 2, base.max_retries)
    assert unheld_values(cfg, yaml.safe_load(path.read_text())["synth"]) == [
        "generators: file 1, config 2", "generation.backend: file 'hf', config 'vllm'"]
