"""Perception pretraining for the tiny model: it arrives able to see, as a real VLM does.

A random ~1M-parameter Qwen2.5-VL cannot learn to see faces from a few dozen seed samples. This
step teaches it what a face's Action Units look like before the loop starts, using only AU-level
descriptions ("the brows are lowered and drawn together (AU4)") of faces rendered from their own
seed stream, disjoint from every face the demo trains or tests on. No emotion word or label is
ever shown: the emotions are left for the seed set, GRPO and synthesis to teach.

Two losses train the model together: the language model's loss on the description (so it learns
to put what it sees into words), and an auxiliary multi-label AU loss on the vision tower's output
tokens, which reaches the vision weights directly. The auxiliary head is thrown away afterwards: the
saved model is the plain Qwen2.5-VL architecture. Same seed, same steps -> the same model.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.facs import EMOTIONS
from engine.demo import faces
from engine.demo.descriptions import feature_phrases
from engine.demo.render import RENDERED_AUS, FaceStyle, render_face

log = logging.getLogger(__name__)

PROMPT = "Describe the facial Action Units you see."
AT_REST = "The facial muscles are at rest."
# Seed streams of the demo's faces: perception faces are drawn from PERCEPTION_SEED_BASE + seed.
PERCEPTION_SEED_BASE = 1000


@dataclass(frozen=True)
class PerceptionSettings:
    faces: int = 1536  # rendered once, then passed over in epochs
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    aux_weight: float = 1.0  # weight of the AU loss on the vision tokens
    seed: int = 0


def describe_aus(aus: dict[str, float], style: FaceStyle, rng: np.random.Generator) -> str:
    """An AU-level description: the features with their ids, and nothing about the emotion."""
    phrases = [text for _, text in feature_phrases(aus, style, rng)]
    if not phrases:
        return AT_REST
    text = "; ".join(phrases) + "."
    return text[0].upper() + text[1:]


def perception_faces(n: int, seed: int) -> list[tuple[Any, str, list[str]]]:
    """(image, AU-level description, AU ids) for n faces of the perception seed stream."""
    stream = PERCEPTION_SEED_BASE + seed
    out = []
    for index in range(n):
        rng = np.random.default_rng([stream, index, 0])
        emotion = EMOTIONS[int(rng.integers(len(EMOTIONS)))]  # drives the expression; never shown
        expression = faces.sample_expression(emotion, rng)
        style = faces.sample_style(emotion, rng)
        out.append((render_face(expression, style), describe_aus(expression, style, rng), list(expression)))
    return out


class _Batches:
    """Tokenised training batches: prompt + description, loss on the description only."""

    def __init__(self, processor: Any, items: list[tuple[Any, str, list[str]]]) -> None:
        self.processor, self.items = processor, items
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        self.prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        # Every face has the same size, so every prompt has the same number of tokens.
        self.prompt_tokens = len(processor(text=[self.prompt], images=[items[0][0]])["input_ids"][0])

    def __call__(self, indices: np.ndarray) -> dict[str, Any]:
        batch = [self.items[i] for i in indices]
        self.processor.tokenizer.padding_side = "right"
        encoded = self.processor(text=[self.prompt + text + "<|im_end|>" for _, text, _ in batch],
                                 images=[image for image, _, _ in batch], return_tensors="pt", padding=True)
        labels = encoded["input_ids"].clone()
        labels[:, :self.prompt_tokens] = -100
        labels[encoded["attention_mask"] == 0] = -100
        encoded["labels"] = labels
        return encoded


def _au_targets(items: list[tuple[Any, str, list[str]]], indices: np.ndarray, aus: list[str]):
    import torch

    return torch.tensor([[1.0 if au in items[i][2] else 0.0 for au in aus] for i in indices])


def pretrain_perception(model_dir: str | Path, settings: PerceptionSettings = PerceptionSettings()) -> dict[str, Any]:
    """Train the model in `model_dir` in place; returns what it cost (seconds, faces, steps, losses)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    started = time.monotonic()
    torch.manual_seed(settings.seed)
    items = perception_faces(settings.faces, settings.seed)
    rendered = time.monotonic() - started
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    batches = _Batches(processor, items)
    aus = list(RENDERED_AUS)
    tokens_per_image = int(batches(np.arange(1))["image_grid_thw"][0].prod()) // model.config.vision_config.spatial_merge_size ** 2
    head = torch.nn.Linear(tokens_per_image * model.config.vision_config.out_hidden_size, len(aus))
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.learning_rate, total_steps=settings.steps,
                                                   pct_start=0.05)
    order = np.random.default_rng(settings.seed)
    indices = np.concatenate([order.permutation(len(items)) for _ in range(
        -(-settings.steps * settings.batch_size // len(items)))])
    losses = []
    seen: list[Any] = []  # the vision tower's output of the current step, kept by a hook (no second pass)
    # (pooler_output, the merged tokens, read at once: the caller replaces it with per-image splits)
    model.model.visual.register_forward_hook(lambda module, args, output: seen.append(output.pooler_output))
    model.train()
    for step in range(settings.steps):
        chosen = indices[step * settings.batch_size:(step + 1) * settings.batch_size]
        batch = batches(chosen)
        seen.clear()
        text_loss = model(**batch).loss
        vision = seen[0].reshape(len(chosen), -1)
        au_loss = torch.nn.functional.binary_cross_entropy_with_logits(head(vision), _au_targets(items, chosen, aus))
        loss = text_loss + settings.aux_weight * au_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append((text_loss.item(), au_loss.item()))
        if step % 20 == 0 or step == settings.steps - 1:
            log.info("perception step %d/%d: text loss %.3f, AU loss %.3f", step + 1, settings.steps, *losses[-1])
    model = model.to(torch.bfloat16)  # the stored dtype of the tiny model
    model.save_pretrained(model_dir)
    return {**asdict(settings), "seconds": round(time.monotonic() - started, 1), "render_seconds": round(rendered, 1),
            "first_losses": losses[0], "last_losses": losses[-1]}
