"""A tiny model that has learned one answer by heart: given one sample's synthesis prompt, greedy
decoding writes that sample's reference reasoning, which the verifier accepts.

A random tiny model is almost never accepted, so the checks on accepted rows of a real generator
backend need a model like this. Full fine-tuning of the ~1M-parameter model on the one prompt takes
seconds on a CPU.
"""
from __future__ import annotations

import io
from pathlib import Path

from engine.core.prompts import make_request
from engine.core.types import Sample


def memorize(base_model: Path, sample: Sample, out: Path, *, hint: bool = True, style: str = "full",
             max_steps: int = 400, lr: float = 3e-3) -> Path:
    """Train `base_model` until greedy decoding of `sample`'s attempt-0 prompt gives its description."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(base_model)
    model = AutoModelForImageTextToText.from_pretrained(base_model, dtype=torch.float32)
    tokenizer = processor.tokenizer
    request = make_request(sample, 0, hint=hint, style=style)
    text = processor.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
    prompt = processor(text=[text], images=[Image.open(io.BytesIO(sample.image)).convert("RGB")], return_tensors="pt")
    answer = tokenizer(sample.description, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    inputs = _with_answer(prompt, answer)
    labels = inputs["input_ids"].clone()
    labels[:, :prompt["input_ids"].shape[1]] = -100
    for parameter in model.model.visual.parameters():  # the one image's features need not change
        parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two on a small shared machine
    try:
        _train(model, optimizer, inputs, labels, prompt, answer, max_steps)
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _train(model, optimizer, inputs, labels, prompt, answer: list[int], max_steps: int) -> None:
    for step in range(max_steps):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.05 and step % 10 == 9 and _greedy(model, prompt, len(answer)) == answer:
            break
    else:
        raise RuntimeError(f"the tiny model did not learn the answer in {max_steps} steps (loss {loss.item():.3f})")


def _with_answer(prompt, answer: list[int]) -> dict:
    """The prompt's tensors followed by the answer's tokens (text: attended, not multimodal)."""
    import torch

    length = prompt["input_ids"].shape[1]
    inputs = dict(prompt)
    for name, value in prompt.items():
        if value.dim() == 2 and value.shape[1] == length:  # one value per token
            tail = torch.tensor([answer]) if name == "input_ids" else torch.full(
                (1, len(answer)), 1 if name == "attention_mask" else 0, dtype=value.dtype)
            inputs[name] = torch.cat([value, tail.to(value.dtype)], dim=1)
    return inputs


def _greedy(model, prompt, length: int) -> list[int]:
    import torch

    model.eval()
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=length, do_sample=False)
    model.train()
    return out[0, prompt["input_ids"].shape[1]:].tolist()
