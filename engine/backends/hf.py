"""transformers, batched: the CPU default backend, for any model AutoModelForImageTextToText loads.

Each call's requests are grouped into batches of similar prompt length (`length_groups`). A batch
then goes through one of two decoders behind the same interface:

- transformers' `generate` on the left-padded batch: any vision-language model (LLaVA, Idefics,
  Gemma 3, ...), with its processor and chat template;
- for the Qwen2-VL family, the engine's own loop (`hf_decode`), measured in BENCHMARKS.md: every
  prompt is prefilled alone, the rows are decoded together, and the KV of each sample's last attempt
  is kept, so a retry, whose prompt repeats that attempt, prefills only its new turn. On CPU a batch's
  KV can be bounded (`generation.decode_cache_mb`): every decode step reads all of it, and past the
  CPU's cache those reads come from memory at half the speed. Greedy completions equal `generate`'s.

`generation.hf_decoder` picks: "auto" (the engine's loop where it serves the model) or "generate".
Greedy when temperature is 0 (the paper's synthesis); n > 1 completions per request are sampled.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from engine.backends import hf_decode
from engine.backends.base import decode_image, error_attempts, model_fingerprint
from engine.backends.tokens import blocked_token_ids
from engine.core.types import Attempt, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

# Largest share of a batch's prompt tokens that may be left padding before a longer prompt goes to
# the next batch: each decode step reads the padded cache of every row.
MAX_PADDING = 0.2


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
        self.prefix_cache = hf_decode.PrefixCache(0)
        self.max_cache_tokens: int | None = None  # per decode batch (`length_groups`)
        self.own_decoding = True  # hf_decode's loop; else transformers' generate
        # for logs and benches: prompt tokens seen, those served from the prefix cache, time in each
        # phase (prefill includes preparing the inputs: image decoding, chat template, processor)
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0
        self.decode_batches = 0

    def load(self, model_dir, adapter, gen_cfg, dtype: str = "auto") -> None:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        if not model_dir:
            raise ValueError("the hf backend needs a model folder")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        unsupported = hf_decode.unsupported_reason(AutoConfig.from_pretrained(model_dir))
        self.own_decoding = gen_cfg.hf_decoder == "auto" and unsupported is None
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.processor.tokenizer.padding_side = "left"  # generate continues every row from its last token
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                            attn_implementation="sdpa")
        if adapter:
            from peft import PeftModel

            # merged once: generation then runs at the base model's speed
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        self.bad_words_ids = [[t] for t in blocked_token_ids(tokenizer, self.model.config)]
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self.batch_size = gen_cfg.batch_size
        self.prefix_cache = hf_decode.PrefixCache(gen_cfg.kv_reuse_mb << 20)
        if self.own_decoding and self.device == "cpu" and gen_cfg.decode_cache_mb:
            self.max_cache_tokens = (gen_cfg.decode_cache_mb << 20) // hf_decode.kv_bytes_per_token(self.model)
        self.model_id = model_fingerprint(model_dir, adapter)
        decoder = "own decoding" if self.own_decoding else f"generate ({unsupported or 'hf_decoder: generate'})"
        log.info("hf backend: %s on %s (%s), %s", self.model_id, self.device, dtype, decoder)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        results: list[list[Attempt] | None] = [None] * len(requests)
        started = time.perf_counter()
        prompts = {}
        for i, req in enumerate(requests):
            try:
                prompts[i] = self._prompt(req)
            except _UndecodableImage as err:  # reported on the attempt, the call goes on
                results[i] = error_attempts(req, self.name, self.model_id, f"image_undecodable: {err}", params.n)
        self.prefill_seconds += time.perf_counter() - started
        usable = list(prompts)
        lengths = [prompts[i].length for i in usable]
        max_cache_tokens = self.max_cache_tokens // params.n if self.max_cache_tokens else None
        run = self._generate_batch if self.own_decoding else self._generate_with_transformers
        for group in length_groups(lengths, self.batch_size, max_cache_tokens=max_cache_tokens,
                                   new_tokens=params.max_new_tokens):
            indices = [usable[g] for g in group]
            batch = run([requests[i] for i in indices], [prompts[i] for i in indices], params)
            for i, attempts in zip(indices, batch):
                results[i] = attempts
        return results  # type: ignore[return-value] - every index is an error or belongs to one group

    def _prompt(self, req: GenerationRequest) -> "_Prompt":
        """One request's chat text and image; with the engine's own decoding, also the processor's tensors
        (the image tokens expanded), which it prefills one prompt at a time."""
        try:
            image = decode_image(req.image)
        except Exception as err:  # noqa: BLE001 - any decoder failure means the same to the caller
            raise _UndecodableImage(err) from err
        text = self.processor.apply_chat_template(list(req.messages), add_generation_prompt=True, tokenize=False)
        if not self.own_decoding:  # batched by the processor later; the text's tokens order the batches
            return _Prompt(text, image, len(self.processor.tokenizer(text)["input_ids"]))
        # lists, converted here: transformers' own tensor conversion walks every token id in Python
        # (2 of 5 ms for a 4,700-token retry prompt)
        inputs = self.processor(text=[text], images=[image])
        tensors = {name: torch.as_tensor(value).to(self.device) for name, value in inputs.items()}
        return _Prompt(text, image, tensors["input_ids"].shape[1], tensors)

    def _generate_with_transformers(self, requests: list[GenerationRequest], prompts: list["_Prompt"],
                                    params: SamplingParams) -> list[list[Attempt]]:
        """transformers' generate on the left-padded batch: n completions per request, row-major."""
        started = time.perf_counter()
        batch = self.processor(text=[p.text for p in prompts], images=[p.image for p in prompts], padding=True,
                               return_tensors="pt").to(self.device)
        if params.temperature > 0:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            out = self.model.generate(**batch, **self._generate_kwargs(params))
        self.decode_seconds += time.perf_counter() - started
        self.decode_batches += 1
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        self.prompt_tokens += sum(prompt_tokens)
        return [[self._attempt(req, _until_eos(new[r * params.n + k], self.eos_ids), prompt_tokens[r])
                 for k in range(params.n)] for r, req in enumerate(requests)]

    def _generate_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
                                      eos_token_id=sorted(self.eos_ids), bad_words_ids=self.bad_words_ids or None,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        if params.temperature > 0:
            return kwargs | dict(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        return kwargs | dict(do_sample=False, temperature=None, top_p=None, top_k=None)

    def _generate_batch(self, requests: list[GenerationRequest], prompts: list["_Prompt"],
                        params: SamplingParams) -> list[list[Attempt]]:
        """The engine's own decoding (Qwen2-VL family): prompts prefilled alone, rows decoded together."""
        inputs = [p.tensors for p in prompts]
        with torch.inference_mode():
            keys = [hashlib.sha256(req.image).hexdigest() for req in requests]
            started = time.perf_counter()
            rows = [self._prefill(row_inputs, key) for row_inputs, key in zip(inputs, keys)]
            self.prefill_seconds += time.perf_counter() - started
            started = time.perf_counter()
            completions, sequences = hf_decode.decode(
                self.model, rows, max_new_tokens=params.max_new_tokens, n=params.n,
                temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                blocked_ids=[ids[0] for ids in self.bad_words_ids], eos_ids=self.eos_ids,
                pad_id=self.processor.tokenizer.pad_token_id)
            self.decode_seconds += time.perf_counter() - started
            self.decode_batches += 1
        for key, sequence in zip(keys, sequences):
            self.prefix_cache.store(key, sequence)
        return [[self._attempt(req, completions[r * params.n + k], len(row.token_ids)) for k in range(params.n)]
                for r, (req, row) in enumerate(zip(requests, rows))]

    def _prefill(self, inputs, image_key: str) -> hf_decode.Prefilled:
        token_ids = inputs["input_ids"][0].tolist()
        cached, reused = self.prefix_cache.lookup(image_key, token_ids)
        row = hf_decode.prefill(self.model, inputs, token_ids, cached, reused)
        self.prompt_tokens += len(row.token_ids)
        self.reused_tokens += reused
        return row

    def _attempt(self, req: GenerationRequest, decoded: hf_decode.Decoded, prompt_tokens: int) -> Attempt:
        text = self.processor.tokenizer.decode(decoded.token_ids, skip_special_tokens=True)
        return Attempt(sample_id=req.sample_id, attempt=req.attempt, backend=self.name, model_id=self.model_id,
                       prompt_hash=req.prompt_hash, completion=text, prompt_tokens=prompt_tokens,
                       completion_tokens=len(decoded.token_ids), finish_reason="stop" if decoded.stopped else "length")

    def close(self) -> None:
        if self.prompt_tokens:
            log.info("hf backend: %d of %d prompt tokens served from the prefix cache",
                     self.reused_tokens, self.prompt_tokens)
        self.prefix_cache.clear()
        self.model = None
        self.processor = None


class _UndecodableImage(Exception):
    pass


@dataclass
class _Prompt:
    text: str
    image: Any
    length: int  # prompt tokens, for grouping into batches
    tensors: dict[str, torch.Tensor] | None = None  # the processor's, for the engine's own decoding


def _until_eos(token_ids: list[int], eos_ids: set[int]) -> hf_decode.Decoded:
    """A generated row up to and including its first end-of-sequence token (the rest is padding)."""
    for position, token in enumerate(token_ids):
        if token in eos_ids:
            return hf_decode.Decoded(token_ids[:position + 1], stopped=True)
    return hf_decode.Decoded(token_ids, stopped=False)


def length_groups(lengths: list[int], batch_size: int, max_padding: float = MAX_PADDING,
                  max_cache_tokens: int | None = None, new_tokens: int = 0) -> list[list[int]]:
    """Indices of `lengths` cut into generate batches of similar prompt length.

    Sorted by length, a batch takes the next prompt while it has fewer than batch_size rows and left
    padding stays at most `max_padding` of its tokens. A retry carries its earlier completions (its
    prompt is 2-3x an attempt 0's), and a padded position costs as much as a real one. A batch whose
    decode cache, rows x (longest prompt + `new_tokens`), exceeds `max_cache_tokens` is then cut into
    the fewest near-equal parts that fit (down to one row each).
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
    if max_cache_tokens is None:
        return groups
    return [part for group in groups
            for part in _split_to_fit(group, lengths[group[-1]] + new_tokens, max_cache_tokens)]


def _split_to_fit(group: list[int], row_tokens: int, max_tokens: int) -> list[list[int]]:
    """`group` in order, cut into the fewest parts of near-equal size whose rows x row_tokens fit."""
    rows_per_part = max(1, max_tokens // row_tokens)
    parts = -(-len(group) // rows_per_part)
    size, extra = divmod(len(group), parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [group[a:b] for a, b in zip(bounds, bounds[1:])]


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
