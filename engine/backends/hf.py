"""transformers generate, batched: the CPU default backend.

Left padding so every row's generation starts right after its prompt, with each call's requests
grouped into batches of similar prompt length (`length_groups`); greedy when temperature is 0
(the paper's synthesis); n > 1 completions per request through num_return_sequences with sampling.
"""
from __future__ import annotations

import logging

from engine.backends.base import decode_image, error_attempts, model_fingerprint, register
from engine.types import Attempt, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

# Largest share of a batch's prompt tokens that may be left padding before a longer prompt goes to
# the next batch: on CPU prefill dominates and a padded position costs as much as a real one.
MAX_PADDING = 0.2


@register("hf")
class HFBackend:
    name = "hf"

    def __init__(self) -> None:
        self.model_id = ""
        self.model = None
        self.processor = None
        self.batch_size = 16
        self.bad_words_ids: list[list[int]] = []
        self.eos_ids: set[int] = set()
        self.device = "cpu"

    def load(self, model_dir, adapter, gen_cfg, dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from engine.tinymodel import blocked_token_ids

        if not model_dir:
            raise ValueError("the hf backend needs a model folder")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        if adapter:
            from peft import PeftModel

            # merged once: generation then runs at the base model's speed
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        self.bad_words_ids = [[t] for t in blocked_token_ids(tokenizer)]
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self.batch_size = gen_cfg.batch_size
        self.model_id = model_fingerprint(model_dir, adapter)
        log.info("hf backend: %s on %s (%s)", self.model_id, self.device, dtype)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        if not requests:  # the tokenizer refuses an empty list
            return []
        texts = [self.processor.apply_chat_template(list(req.messages), add_generation_prompt=True, tokenize=False)
                 for req in requests]
        lengths = [len(ids) for ids in self.processor.tokenizer(texts)["input_ids"]]
        results: list[list[Attempt] | None] = [None] * len(requests)
        for group in length_groups(lengths, self.batch_size):
            for i, attempts in zip(group, self._generate_batch([requests[i] for i in group],
                                                               [texts[i] for i in group], params)):
                results[i] = attempts
        return results  # type: ignore[return-value] - every index belongs to one group

    def _generate_batch(self, requests: list[GenerationRequest], texts: list[str],
                        params: SamplingParams) -> list[list[Attempt]]:
        import torch

        images, usable = [], []
        out: list[list[Attempt] | None] = [None] * len(requests)
        for i, req in enumerate(requests):
            try:
                images.append(decode_image(req.image))
                usable.append(i)
            except Exception as err:  # noqa: BLE001 - reported on the attempt, the batch goes on
                out[i] = error_attempts(req, self.name, self.model_id, f"image_undecodable: {err}", params.n)
        if usable:
            texts = [texts[i] for i in usable]
            inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True).to(self.device)
            sampling = params.temperature > 0
            if sampling:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                sequences = self.model.generate(
                    **inputs, max_new_tokens=params.max_new_tokens, do_sample=sampling,
                    temperature=params.temperature if sampling else None, top_p=params.top_p if sampling else None,
                    top_k=0 if sampling else None, num_return_sequences=params.n, bad_words_ids=self.bad_words_ids or None,
                    pad_token_id=self.processor.tokenizer.pad_token_id,
                    # a preallocated KV cache: the default one is concatenated (copied whole) at every
                    # step, which at batch 16 was a fifth of decode time on CPU; same tokens either way
                    cache_implementation="static")
            prompt_len = inputs["input_ids"].shape[1]
            prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
            generated = sequences[:, prompt_len:].tolist()
            for row, i in enumerate(usable):
                out[i] = [self._attempt(requests[i], generated[row * params.n + k], prompt_tokens[row])
                          for k in range(params.n)]
        return [attempts for attempts in out if attempts is not None]

    def _attempt(self, req: GenerationRequest, tokens: list[int], prompt_tokens: int) -> Attempt:
        # generate pads finished rows with pad (often == eos): keep tokens up to and including the first eos
        stop_at = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop_at is None else tokens[:stop_at + 1]
        text = self.processor.tokenizer.decode(kept, skip_special_tokens=True)
        return Attempt(sample_id=req.sample_id, attempt=req.attempt, backend=self.name, model_id=self.model_id,
                       prompt_hash=req.prompt_hash, completion=text, prompt_tokens=int(prompt_tokens),
                       completion_tokens=len(kept), finish_reason="length" if stop_at is None else "stop")

    def close(self) -> None:
        self.model = None
        self.processor = None


def length_groups(lengths: list[int], batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of `lengths` cut into generate batches of similar prompt length.

    Sorted by length, a batch takes the next prompt while it has fewer than batch_size rows and left
    padding stays at most `max_padding` of its tokens. A retry carries its earlier completions (its
    prompt is 2-3x an attempt 0's), and a padded position costs as much as a real one in prefill.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    total = 0
    for i in order:
        group = groups[-1] if groups else []
        # ascending order: lengths[i] is the longest row of the group once added
        padded = (len(group) + 1) * lengths[i]
        if group and len(group) < batch_size and padded - (total + lengths[i]) <= max_padding * padded:
            group.append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
