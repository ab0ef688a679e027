"""Tokens that only the processor may place, which generation must therefore never emit.

A sampled image placeholder or vision delimiter breaks the next prompt that carries the completion
(its image-token count no longer matches the image) and the training forward over it. A trained model
never emits them; a random or young one can. The rule is the model's own: the ids its config names
for image/video placeholders and delimiters, plus the tokenizer's special tokens named after an image,
a video or vision (Qwen2-VL's <|vision_pad|>, Idefics' <fake_token_around_image>, LLaVA's <image>).
Used as bad_words_ids in transformers and as a -100 logit_bias in vLLM.
"""
from __future__ import annotations

from typing import Any

# Config fields that hold such a token id, across model families (Qwen2-VL, LLaVA, Idefics3, Gemma 3, ...).
CONFIG_TOKEN_FIELDS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index",
                       "vision_start_token_id", "vision_end_token_id", "boi_token_index", "eoi_token_index")
MEDIA_WORDS = ("image", "video", "vision")


def blocked_token_ids(processor: Any, config: Any = None) -> list[int]:
    """Sorted ids generation must not emit; `processor` may be a processor or its tokenizer, `config`
    the model's config (or None: the tokenizer's names alone)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = set(_named_media_tokens(tokenizer)) | set(_config_token_ids(config))
    return sorted(i for i in ids if 0 <= i < len(tokenizer))


def _config_token_ids(config: Any) -> list[int]:
    if config is None:
        return []
    values = (getattr(config, name, None) for name in CONFIG_TOKEN_FIELDS)
    return [v for v in values if isinstance(v, int)]


def _named_media_tokens(tokenizer: Any) -> list[int]:
    return [token_id for token_id, token in tokenizer.added_tokens_decoder.items()
            if token.special and any(word in token.content.lower() for word in MEDIA_WORDS)]
