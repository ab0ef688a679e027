"""The token rule of the backends: what generation must never emit comes from the model's own config
and tokenizer, not from a list kept for one model family."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.backends.tokens import blocked_token_ids


@pytest.fixture()
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_qwen_vision_tokens_come_from_config_and_names(tiny_model, tokenizer):
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(tiny_model)
    expected = sorted(tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]))
    assert blocked_token_ids(AutoProcessor.from_pretrained(tiny_model), config) == expected
    assert blocked_token_ids(tokenizer) == expected  # the names alone suffice for this family


def test_a_config_named_placeholder_is_blocked_whatever_its_text(tokenizer):
    box = tokenizer.convert_tokens_to_ids("<|box_start|>")
    assert box not in blocked_token_ids(tokenizer)
    llava_like = SimpleNamespace(image_token_index=box, video_token_index=None)
    assert box in blocked_token_ids(tokenizer, llava_like)
    assert len(tokenizer) + 5 not in blocked_token_ids(tokenizer, SimpleNamespace(image_token_id=len(tokenizer) + 5))


def test_ordinary_tokens_that_mention_images_stay_allowed(tokenizer):
    tokenizer.add_tokens(["<image_caption>"])  # added, but not special: text a model may write
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>"]})
    blocked = blocked_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<image_caption>") not in blocked
    assert tokenizer.convert_tokens_to_ids("<fake_token_around_image>") in blocked
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in blocked
