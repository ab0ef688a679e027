"""SFT with real TRL + PEFT on the tiny model and the synthetic faces (CPU)."""
from __future__ import annotations

import json
from statistics import mean

import pytest
import yaml

from engine.backends.base import create
from engine.core.config import GenerationConfig
from engine.data.dataset import iter_samples
from engine.core.prompts import make_request
from engine.core.types import CheckpointRef, SamplingParams
from trainer.common import TrainingError
from trainer.run import train, training_config

# LoRA on the attention plus a fully trained lm_head: a random tiny model's logits are too small for
# attention adapters alone to move the loss far, a trained head makes the fall large and reliable.
SFT = {"sft": {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
    "learning_rate": 1.0e-2, "lr_scheduler_type": "constant", "max_steps": 16, "per_device_train_batch_size": 2,
    "precision": "fp32", "shuffle_buffer": 0, "save_steps": 8, "logging_steps": 1, "report_to": ["tensorboard"],
}}


@pytest.fixture(scope="module")
def sft_run(tiny_model, faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    config = root / "sft.yaml"
    eval_source = {"uri": str(faces / "samples.jsonl"), "weight": 1.0}
    config.write_text(yaml.safe_dump({"sft": {**SFT["sft"], "eval_data": [eval_source], "eval_steps": 8}}))
    out = root / "out"
    cfg = training_config("sft", data=[str(faces / "samples.jsonl")], model=str(tiny_model), out=str(out),
                          config_path=str(config))
    summary = train("sft", cfg)
    return summary, out, config


def test_sft_trains_and_loss_falls(sft_run):
    summary, out, _ = sft_run
    assert summary["global_step"] == 16 and summary["steps_run"] == 16 and summary["resumed_from_step"] == 0
    losses = [entry["loss"] for entry in json.loads((out / "log_history.json").read_text()) if "loss" in entry]
    assert len(losses) == 16
    assert mean(losses[-3:]) < mean(losses[:3]) - 1.0, losses
    assert summary["data"] == {"rows": 24, "skipped_no_description": 0,
                               "sources": [{"uri": summary["data"]["sources"][0]["uri"], "rows": 24,
                                            "skipped_no_description": 0}]}
    assert list((out / "runs").rglob("events.out.tfevents*")), "no TensorBoard events"
    evals = [e for e in json.loads((out / "log_history.json").read_text()) if "eval_loss" in e]
    assert [e["step"] for e in evals] == [8, 16] and evals[1]["eval_loss"] < losses[0]
    assert (out / "checkpoint-8" / "trainer_state.json").exists()


def test_sft_saves_adapter_and_a_merged_model_the_hf_backend_loads(sft_run, faces, tiny_model):
    summary, out, _ = sft_run
    ref = CheckpointRef.from_json((out / "checkpoint.json").read_text())
    assert ref.uri == str(out / "merged") and ref.adapter_uri == str(out / "adapter") and ref.stage == "sft"
    assert ref.base_model == str(tiny_model) and ref.metrics["global_step"] == 16
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "merged" / "model.safetensors").exists() and (out / "merged" / "config.json").exists()
    sample = next(iter_samples(str(faces / "samples.jsonl")))
    backend = create("hf", ref.uri, None, GenerationConfig(max_new_tokens=12))
    try:
        [[attempt]] = backend.generate([make_request(sample, 0, hint=False)], SamplingParams(max_new_tokens=12))
    finally:
        backend.close()
    assert attempt.error is None and attempt.completion_tokens > 0


def test_a_second_run_into_the_same_folder_needs_resume(sft_run, faces, tiny_model):
    _, out, config = sft_run
    with pytest.raises(TrainingError, match="--resume"):
        train("sft", training_config("sft", data=[str(faces / "samples.jsonl")], model=str(tiny_model),
                                     out=str(out), config_path=str(config)))


def test_full_fine_tuning_keeps_a_frozen_vision_tower(tiny_model, faces, tmp_path):
    from safetensors.torch import load_file

    from trainer.common import is_vision_parameter

    config = tmp_path / "full.yaml"
    config.write_text(yaml.safe_dump({"sft": {
        "lora": {"enabled": False}, "freeze_vision": True, "learning_rate": 1.0e-3, "max_steps": 2,
        "per_device_train_batch_size": 2, "precision": "fp32", "shuffle_buffer": 0, "report_to": ["none"]}}))
    out = tmp_path / "out"
    cfg = training_config("sft", data=[str(faces / "samples.jsonl")], model=str(tiny_model), out=str(out),
                          config_path=str(config))
    summary = train("sft", cfg)
    assert summary["checkpoint"]["adapter_uri"] is None and not (out / "adapter").exists()
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(out / "merged" / "model.safetensors")
    assert before.keys() == after.keys()
    vision = [k for k in before if is_vision_parameter(k)]
    language = [k for k in before if not is_vision_parameter(k)]
    assert vision and all((before[k] == after[k]).all() for k in vision)
    assert any(not (before[k] == after[k]).all() for k in language)


@pytest.mark.vllm
def test_merged_model_loads_in_vllm(sft_run, faces):
    _, out, _ = sft_run
    sample = next(iter_samples(str(faces / "samples.jsonl")))
    backend = create("vllm", str(out / "merged"), None,
                     GenerationConfig(backend="vllm", max_new_tokens=8, max_model_len=1024))
    try:
        [[attempt]] = backend.generate([make_request(sample, 0, hint=False)], SamplingParams(max_new_tokens=8))
    finally:
        backend.close()
    assert attempt.error is None and attempt.completion_tokens > 0


@pytest.mark.parametrize("freeze", [True, False])
def test_lora_adapters_stay_out_of_a_frozen_vision_tower(tiny_model, freeze):
    from peft import get_peft_model

    from engine.core.config import SFTSection
    from trainer.common import is_vision_parameter, load_model, trainable_setup

    cfg = SFTSection(freeze_vision=freeze)  # the default targets include MLP names the vision blocks share
    model = load_model(str(tiny_model), "fp32")
    peft_model = get_peft_model(model, trainable_setup(model, cfg))
    adapters = [name for name, _ in peft_model.named_parameters() if "lora_" in name]
    assert any(not is_vision_parameter(name) for name in adapters)
    assert any(is_vision_parameter(name) for name in adapters) is not freeze
