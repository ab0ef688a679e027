"""Generation for the hf backend: each prompt prefilled alone, rows decoded together, and each
sample's KV cache kept from one attempt to the next.

Why not `model.generate` on a left-padded batch:
- A retry's prompt is the previous attempt's prompt and completion plus a short feedback turn. The
  KV of that shared prefix was computed by the previous attempt; `PrefixCache` keeps it, so a retry
  prefills only its new tail (vLLM's prefix caching does the same). On CPU, prefill of a 2,500-token
  retry prompt costs more than decoding 256 tokens.
- A padded batch prefill needs a 4D mask (rows x prompt x prompt) that SDPA converts per layer; at
  16 rows of 2,500 tokens that was 40% of the prefill. Alone, a prompt needs no mask.

Decoding then runs on all rows at once: each row's cache is copied right-aligned into a preallocated
buffer (left padding masked out), every row advances one token a step, and a row stops at its first
end-of-sequence token. Greedy rows equal `generate`'s; sampling is temperature and top-p.

A decode step (`decode_step`) runs the model's own modules directly. Through the model's forward,
each step also built a padding mask, cache objects and output records: six attempts of 16 rows
decoded 15-20% slower that way on CPU. With a padding mask, transformers' SDPA path also copies
every key and value head once per query head that shares it (grouped-query attention): at 16 rows of
2,800 cached tokens that copy cost 5x the attention itself. `grouped_decode_attention` reads each
head in place.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

# Model types whose text decoder `decode_step` runs (Qwen2-VL's structure and M-RoPE positions).
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def unsupported_reason(config) -> str | None:
    """Why `prefill`/`decode` would run this model wrongly (None: they serve it): other architectures,
    and sliding-window layers (decoding builds one full-attention mask for every layer)."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        families = ", ".join(SUPPORTED_MODEL_TYPES)
        return f"this decoding serves the Qwen2-VL family ({families}), not {config.model_type!r}"
    layer_types = set(getattr(config.get_text_config(), "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"this decoding serves full-attention models only; this one has {sorted(layer_types)} layers"
    return None


def check_supported(config) -> None:
    reason = unsupported_reason(config)
    if reason:
        raise ValueError(reason)


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token adds to the cache, over all layers."""
    layers = model.model.language_model.layers
    k_proj = layers[0].self_attn.k_proj
    return 2 * len(layers) * k_proj.out_features * k_proj.weight.element_size()


def grouped_decode_attention(query, keys, values, padding, scaling: float) -> torch.Tensor:
    """One query token per row ([batch, heads, 1, dim]) against its cached keys and values ([batch,
    kv_heads, len, dim]), `padding` [batch, 1, 1, len] added to the scaled scores (0, or -inf where a
    position is left out). Each key/value head serves its group of query heads in place, where SDPA
    would first copy it once per query head. Returns [batch, 1, heads, dim]."""
    batch, heads, _, dim = query.shape
    kv_heads = keys.shape[1]
    # [batch, kv_heads, group, dim] @ [batch, kv_heads, dim, len] -> one score row per query head
    scores = torch.matmul(query.view(batch, kv_heads, heads // kv_heads, dim), keys.transpose(-1, -2)).float()
    # scale and mask in one pass: x * scaling + 0 is x * scaling exactly
    scores = torch.add(padding, scores, alpha=scaling)
    out = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2)


@dataclass
class CachedSequence:
    """The KV of one finished sequence: `token_ids[:len]` with its per-layer keys and values
    (each [kv_heads, len, head_dim]) and the M-RoPE offset of its text positions."""
    token_ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rope_delta: int
    image_end: int  # index after the last vision token: a reused prefix must cover the image

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class PrefixCache:
    """Finished sequences by image digest (the newest per image), least recently used evicted past
    `max_bytes`. A prompt reuses the longest token prefix it shares with its image's sequence."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, CachedSequence] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, image_key: str, token_ids: list[int]) -> tuple[CachedSequence | None, int]:
        """The image's cached sequence and how many leading tokens of `token_ids` it covers (0: none
        usable). At least one token is left to prefill, since its logits start the completion."""
        entry = self._entries.get(image_key)
        if entry is None:
            return None, 0
        self._entries.move_to_end(image_key)
        shared = _common_prefix(entry.token_ids, token_ids)
        shared = min(shared, len(token_ids) - 1)
        return (entry, shared) if shared > entry.image_end else (None, 0)

    def store(self, image_key: str, sequence: CachedSequence) -> None:
        if sequence.nbytes > self.max_bytes:
            return
        old = self._entries.pop(image_key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._entries[image_key] = sequence
        self.bytes += sequence.nbytes
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Prefilled:
    """One prompt after prefill: its full token ids, per-layer KV [kv_heads, len, head_dim] (the
    prompt, every token), the logits of its last token, and where its text positions stand."""
    token_ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_logits: torch.Tensor
    rope_delta: int
    image_end: int
    reused_tokens: int


def prefill(model, inputs: dict[str, torch.Tensor], token_ids: list[int], cached: CachedSequence | None,
            reused: int) -> Prefilled:
    """Run one prompt (processor outputs for a single row, no padding; `token_ids` its input ids as a
    list) through the model, starting after the `reused` tokens whose KV `cached` holds."""
    ids = inputs["input_ids"]
    cache = DynamicCache()
    if cached is None:
        positions, deltas = model.model.get_rope_index(
            ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"])
        rope_delta = int(deltas.reshape(-1)[0])
        forward = dict(input_ids=ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
        image_end = _image_end(model, token_ids)
    else:
        for layer, (k, v) in enumerate(zip(cached.keys, cached.values)):
            cache.update(k[None, :, :reused], v[None, :, :reused], layer)
        rope_delta, image_end = cached.rope_delta, cached.image_end
        # after the image every token is text: one position each, offset by the image's delta
        positions = (torch.arange(reused, len(token_ids), device=ids.device) + rope_delta).expand(3, 1, -1)
        mask = _tail_mask(reused, len(token_ids), model.dtype, ids.device)
        forward = dict(input_ids=ids[:, reused:], attention_mask=mask)
    out = model(**forward, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    keys = [layer.keys[0] for layer in cache.layers]
    values = [layer.values[0] for layer in cache.layers]
    return Prefilled(token_ids, keys, values, out.logits[0, -1], rope_delta, image_end, reused)


def _tail_mask(reused: int, total: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The causal mask of a prompt's tail after `reused` cached tokens, [1, 1, tail, total], additive
    (-inf above the diagonal). Given ready and as a float, it is neither built by transformers nor
    converted from booleans by SDPA in every layer."""
    tail = total - reused
    mask = torch.zeros((tail, total), dtype=dtype, device=device)
    mask[:, reused:] = torch.full((tail, tail), float("-inf"), dtype=dtype, device=device).triu_(1)
    return mask[None, None]


def _image_end(model, token_ids: list[int]) -> int:
    vision_ids = {model.config.image_token_id, model.config.vision_end_token_id, model.config.vision_start_token_id}
    return max((i for i, t in enumerate(token_ids) if t in vision_ids), default=-1) + 1


@dataclass
class Decoded:
    token_ids: list[int]  # generated, up to and including the first end-of-sequence token
    stopped: bool         # ended on end-of-sequence (else on max_new_tokens)


def decode(model, rows: list[Prefilled], *, max_new_tokens: int, n: int, temperature: float, top_p: float,
           seed: int, blocked_ids: list[int], eos_ids: set[int],
           pad_id: int) -> tuple[list[Decoded], list[CachedSequence]]:
    """Decode `n` completions of every prefilled row together (row-major: row 0's n, then row 1's).

    Also returns, per row, its prompt and first completion with their KV, for the prefix cache."""
    device = rows[0].last_logits.device
    cache = DecodeCache(rows, n, max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    blocked = torch.tensor(blocked_ids, dtype=torch.long, device=device)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    logits = torch.stack([row.last_logits for row in rows]).repeat_interleave(n, dim=0)
    # text position of each row's next token: prompt length + the image's offset
    position = torch.tensor([len(r.token_ids) + r.rope_delta for r in rows], device=device).repeat_interleave(n)
    cos, sin = rotary_table(model, position, max_new_tokens)
    done = torch.zeros(cache.batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = _choose(logits, blocked, temperature, top_p, generator)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        steps.append(token)
        done |= torch.isin(token, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = decode_step(model, token, (cos[:, step:step + 1], sin[:, step:step + 1]), cache,
                             column=cache.width + step)
    completions = _completions(steps, eos_ids, cache.batch)
    return completions, cache.first_completions(rows, completions[::n], len(steps))


class DecodeCache:
    """Per layer, preallocated keys and values [rows * n, kv_heads, columns, head_dim]: each prompt's KV
    right-aligned to the longest prompt (`width`), then one column per decode step, the same for every
    row; `padding` (-inf there, else 0) masks each row's left padding. (A growing cache would be copied
    whole every step.)"""

    def __init__(self, rows: list[Prefilled], n: int, max_new_tokens: int) -> None:
        first = rows[0].keys[0]
        self.n, self.width = n, max(len(r.token_ids) for r in rows)
        self.batch = len(rows) * n
        shape = (self.batch, first.shape[0], self.width + max_new_tokens, first.shape[-1])
        # zeros, not empty: a padded position's value gets a zero weight, and 0 * NaN would be NaN
        self.keys = [torch.zeros(shape, dtype=first.dtype, device=first.device) for _ in rows[0].keys]
        self.values = [torch.zeros(shape, dtype=first.dtype, device=first.device) for _ in rows[0].keys]
        self.padding = torch.zeros(self.batch, 1, 1, shape[2], dtype=torch.float32, device=first.device)
        for r, row in enumerate(rows):
            start, span = self.width - len(row.token_ids), slice(r * n, (r + 1) * n)
            self.padding[span, ..., :start] = float("-inf")
            for layer, (k, v) in enumerate(zip(row.keys, row.values)):
                self.keys[layer][span, :, start:self.width] = k
                self.values[layer][span, :, start:self.width] = v

    def first_completions(self, rows: list[Prefilled], firsts: list[Decoded], steps: int) -> list[CachedSequence]:
        """Per row, prompt + first completion as far as its KV was computed (the last decoded token is
        never fed back), cut out of the padded buffers (row r's n completions are buffer rows r*n...)."""
        kept = []
        for r, (row, first) in enumerate(zip(rows, firsts)):
            fed = min(len(first.token_ids), steps - 1)
            start, end = self.width - len(row.token_ids), self.width + fed
            kept.append(CachedSequence(
                token_ids=row.token_ids + first.token_ids[:fed],
                keys=[k[r * self.n, :, start:end].clone() for k in self.keys],
                values=[v[r * self.n, :, start:end].clone() for v in self.values],
                rope_delta=row.rope_delta, image_end=row.image_end))
        return kept


def rotary_table(model, first_position: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary cos and sin ([rows, steps, dim]) of each row's next `steps` text positions, from
    `first_position` [rows] on: computed once per decode instead of once per step (the same values:
    each is one product of a frequency and a position). Text tokens have one position on all three
    M-RoPE axes."""
    positions = first_position[:, None] + torch.arange(steps, device=first_position.device)
    text = model.model.language_model
    # its first argument only gives the dtype and device of the result
    return text.rotary_emb(text.embed_tokens.weight, positions.expand(3, -1, -1))


def decode_step(model, token: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], cache: DecodeCache,
                column: int) -> torch.Tensor:
    """One token per row through the text decoder, its KV written at `column`: the next-token logits.
    `rotary`: the cos and sin of each row's position ([rows, 1, dim], from `rotary_table`).

    The model's own modules and arithmetic, in its forward's order (greedy tokens equal `generate`'s),
    without what a one-token step does not need: mask building, cache objects, output records."""
    text = model.model.language_model
    batch = token.shape[0]
    hidden = text.embed_tokens(token[:, None])
    cos, sin = rotary
    padding = cache.padding[..., :column + 1]
    for layer, keys, values in zip(text.layers, cache.keys, cache.values):
        attention = layer.self_attn
        x = layer.input_layernorm(hidden)
        q, k, v = (proj(x).view(batch, 1, -1, attention.head_dim).transpose(1, 2)
                   for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys[:, :, column] = k[:, :, 0]
        values[:, :, column] = v[:, :, 0]
        out = grouped_decode_attention(q, keys[:, :, :column + 1], values[:, :, :column + 1], padding,
                                       attention.scaling)
        hidden = hidden + attention.o_proj(out.reshape(batch, 1, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(text.norm(hidden))[:, -1]


def _choose(logits: torch.Tensor, blocked: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    logits = logits.float()
    if blocked.numel():
        logits[:, blocked] = float("-inf")
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest head whose mass reaches top_p (the first token always stays)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _completions(steps: list[torch.Tensor], eos_ids: set[int], batch: int) -> list[Decoded]:
    tokens = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(batch)]
    out = []
    for row in tokens:
        stop = next((k for k, t in enumerate(row) if t in eos_ids), None)
        out.append(Decoded(row if stop is None else row[:stop + 1], stop is not None))
    return out
