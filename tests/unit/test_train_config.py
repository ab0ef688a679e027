"""Training/eval config sections, the shipped YAMLs, and the small pure helpers of the trainer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.core.config import ConfigError, EvalSection, GRPOSection, SFTSection, load_config
from tests.support.config_files import launches_itself, unheld_values
from trainer.common import TrainingError, is_vision_parameter, last_checkpoint, resume_point
from trainer.data import mixing_probabilities
from trainer.ray_launch import accelerate_command
from trainer.run import training_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_official_defaults():
    # run_scripts/grpo_emotion.sh: --num_generations 8 --beta 0.0 --max_completion_length 256;
    # grpo_config.py: lr 1e-6, epsilon 0.2; grpo_trainer.py: temperature 1
    grpo = GRPOSection()
    assert (grpo.num_generations, grpo.beta, grpo.learning_rate, grpo.epsilon, grpo.temperature,
            grpo.max_completion_length) == (8, 0.0, 1e-6, 0.2, 1.0, 256)
    assert "grpo_emotion.sh" in GRPOSection.model_fields["beta"].description
    assert grpo.lora.enabled and grpo.freeze_vision and grpo.report_to == ("tensorboard",)
    sft = SFTSection()
    assert sft.learning_rate == 1e-4 and sft.lora.enabled


@pytest.mark.parametrize("name, sections", [("sft.yaml", ["sft"]), ("grpo.yaml", ["grpo"]),
                                            ("cpu-smoke.yaml", ["sft", "grpo", "eval"]),
                                            ("sft-official.yaml", ["sft"]), ("grpo-official.yaml", ["grpo"])])
def test_shipped_yamls_hold_what_they_say_and_say_how_to_launch(name, sections):
    text = (CONFIGS / name).read_text()
    assert text.startswith("#") and ("accelerate launch" in text or "fea train" in text)
    assert launches_itself(CONFIGS / name)
    classes = {"sft": SFTSection, "grpo": GRPOSection, "eval": EvalSection}
    for section in sections:
        cfg = load_config(classes[section], CONFIGS / name, section=section)
        assert unheld_values(cfg, yaml.safe_load(text)[section]) == [], section
    grpo = load_config(GRPOSection, CONFIGS / "grpo.yaml", section="grpo")
    assert (grpo.num_generations, grpo.beta, grpo.learning_rate, grpo.epsilon, grpo.temperature,
            grpo.max_completion_length) == (8, 0.0, 1e-6, 0.2, 1.0, 256)


@pytest.mark.parametrize("name, kind, stage", [("ddp.yaml", "MULTI_GPU", None), ("zero2.yaml", "DEEPSPEED", 2),
                                               ("zero3.yaml", "DEEPSPEED", 3)])
def test_accelerate_configs(name, kind, stage):
    text = (CONFIGS / "accelerate" / name).read_text()
    assert text.startswith("#") and "accelerate launch" in text
    cfg = yaml.safe_load(text)
    assert cfg["distributed_type"] == kind and cfg["num_processes"] >= 1
    if stage:
        assert cfg["deepspeed_config"]["zero_stage"] == stage


def test_flags_override_the_file_and_weights_pair_with_data(tmp_path):
    cfg = training_config("sft", data=["a", "b"], weights=[3, 1], model="m", out="o", max_steps=5,
                          config_path=str(CONFIGS / "sft.yaml"))
    assert [(s.uri, s.weight) for s in cfg.data] == [("a", 3.0), ("b", 1.0)]
    assert (cfg.model.path, cfg.out, cfg.max_steps, cfg.learning_rate) == ("m", "o", 5, 1e-4)
    assert mixing_probabilities(cfg.data) == [0.75, 0.25]
    kept = training_config("grpo", config_path=str(CONFIGS / "grpo.yaml"))
    assert [s.uri for s in kept.data] == ["s3://fea/fea20k-split/pool"]  # `fea split` writes it
    with pytest.raises(ValueError, match="2 weights for 1"):
        training_config("sft", data=["a"], weights=[1, 2])
    with pytest.raises(ConfigError, match="twice"):
        training_config("sft", data=["a", "a"])
    with pytest.raises(ConfigError, match="no top-level section 'grpo'"):
        training_config("grpo", config_path=str(CONFIGS / "sft.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        training_config("sft", config_path=str(bad))


def _checkpoint(out: Path, step: int, complete: bool) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_last_checkpoint_skips_and_removes_partial_ones(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    _checkpoint(tmp_path, 4, True)
    good = _checkpoint(tmp_path, 10, True)
    partial = _checkpoint(tmp_path, 12, False)
    (tmp_path / "checkpoint-notanumber").mkdir()
    assert last_checkpoint(tmp_path) == good
    assert not partial.exists()
    assert resume_point(tmp_path, True) == good
    with pytest.raises(TrainingError, match="--resume"):
        resume_point(tmp_path, False)
    assert resume_point(tmp_path / "fresh", True) is None and resume_point(tmp_path / "fresh", False) is None


def test_vision_parameters_are_recognised():
    assert is_vision_parameter("model.visual.blocks.0.attn.qkv.weight")
    assert is_vision_parameter("visual.merger.mlp.0.weight")
    assert is_vision_parameter("model.vision_tower.encoder.layers.0.fc1.weight")
    assert not is_vision_parameter("model.language_model.layers.0.self_attn.q_proj.weight")
    assert not is_vision_parameter("lm_head.weight")


def test_accelerate_command_per_node():
    cmd = accelerate_command(["train", "sft", "--out", "o"], accelerate_config="configs/accelerate/zero3.yaml",
                             nodes=2, rank=1, processes_per_node=8, main_ip="10.0.0.1", port=29500)
    joined = " ".join(cmd)
    assert "--config_file configs/accelerate/zero3.yaml" in joined
    assert "--num_machines 2 --machine_rank 1 --num_processes 16 --main_process_ip 10.0.0.1" in joined
    assert cmd[-6:] == ["-m", "engine.cli", "train", "sft", "--out", "o"]


def test_official_configs_reproduce_the_official_scripts():
    from engine.core.config import SynthConfig

    grpo = load_config(GRPOSection, CONFIGS / "grpo-official.yaml", section="grpo")
    assert (grpo.beta, grpo.max_completion_length, grpo.num_generations, grpo.learning_rate) == (0.0, 256, 8, 1e-6)
    assert (grpo.per_device_train_batch_size, grpo.gradient_accumulation_steps, grpo.num_train_epochs) == (8, 4, 8)
    assert grpo.verifier.au_weight == 0.0 and grpo.prompt_style == "facial-r1" and not grpo.lora.enabled
    sft = load_config(SFTSection, CONFIGS / "sft-official.yaml", section="sft")
    assert (sft.learning_rate, sft.num_train_epochs, sft.max_length, sft.lora.enabled) == (5e-6, 2, 2048, False)
    synth = load_config(SynthConfig, CONFIGS / "synth-official.yaml", section="synth")
    assert (synth.verifier.policy, synth.prompt_style, synth.max_retries, synth.generation.max_new_tokens) == (
        "paper", "facial-r1", 5, 1024)
    evaluation = load_config(EvalSection, CONFIGS / "eval-official.yaml", section="eval")
    assert evaluation.prompt_style == "facial-r1" and evaluation.generation.max_new_tokens == 1024
    for name in ("grpo-official.yaml", "sft-official.yaml", "eval-official.yaml"):
        header = (CONFIGS / name).read_text().split("\n", 1)[0]
        assert header.startswith("#")
