"""The hf backend's own decoding pieces: the prefix cache's rules, the grouped-query decode attention
against transformers' SDPA path, and token choice."""
from __future__ import annotations

import types

import pytest
import torch

from engine.backends.hf_decode import CachedSequence, PrefixCache, _choose, check_supported, grouped_decode_attention


def sequence(token_ids, image_end=2, width=4):
    length = len(token_ids)
    return CachedSequence(token_ids=list(token_ids), keys=[torch.zeros(1, length, width)],
                          values=[torch.zeros(1, length, width)], rope_delta=-3, image_end=image_end)


def test_lookup_reuses_the_shared_prefix_and_leaves_a_token_to_prefill():
    cache = PrefixCache(1 << 20)
    cache.store("img", sequence([1, 2, 3, 4, 5, 6]))
    assert cache.lookup("img", [1, 2, 3, 4, 9, 9])[1] == 4
    assert cache.lookup("img", [1, 2, 3, 4, 5, 6])[1] == 5  # the whole prompt cached: its last token reruns
    assert cache.lookup("other", [1, 2, 3, 4])[1] == 0


def test_lookup_refuses_a_prefix_that_ends_inside_the_image():
    cache = PrefixCache(1 << 20)
    cache.store("img", sequence([1, 2, 3, 4, 5], image_end=3))
    assert cache.lookup("img", [1, 2, 9, 9]) == (None, 0)
    entry, shared = cache.lookup("img", [1, 2, 3, 4, 9])
    assert entry is not None and shared == 4


def test_least_recently_used_sequences_go_first_when_the_budget_is_full():
    one = sequence(range(8)).nbytes
    cache = PrefixCache(2 * one)
    cache.store("a", sequence(range(8)))
    cache.store("b", sequence(range(8)))
    cache.lookup("a", [0, 1, 2, 3])  # a used last
    cache.store("c", sequence(range(8)))
    assert cache.lookup("b", [0, 1, 2, 3]) == (None, 0)
    assert cache.lookup("a", [0, 1, 2, 3])[1] == 3 and cache.lookup("c", [0, 1, 2, 3])[1] == 3
    assert cache.bytes == 2 * one
    cache.store("a", sequence(range(4)))  # replacing an entry frees its bytes
    assert cache.bytes == one + sequence(range(4)).nbytes
    cache.store("huge", sequence(range(100)))  # larger than the whole budget: not kept
    assert cache.lookup("huge", [0, 1, 2, 3]) == (None, 0) and len(cache) == 2


def test_grouped_decode_attention_equals_sdpa_with_repeated_heads():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    batch, heads, kv_heads, kv_len, dim = 3, 4, 2, 37, 16
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, kv_len, dim), torch.randn(batch, kv_heads, kv_len, dim)
    allowed = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
    allowed[0, ..., :10] = False  # left padding of different widths
    allowed[2, ..., :3] = False
    padding = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    ours = grouped_decode_attention(query, key, value, padding, scaling=0.3)
    reference, _ = sdpa_attention_forward(module, query, key, value, allowed, scaling=0.3)
    assert ours.shape == reference.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_choose_is_argmax_when_greedy_and_never_picks_a_blocked_token():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9], [3.0, 0.0, 2.0, 1.0]])
    blocked = torch.tensor([1])
    assert _choose(logits.clone(), blocked, 0.0, 1.0, None).tolist() == [3, 0]
    generator = torch.Generator().manual_seed(0)
    picks = {int(t) for _ in range(200) for t in _choose(logits.clone(), blocked, 1.0, 1.0, generator)}
    assert 1 not in picks and len(picks) > 2


def test_choose_with_a_small_top_p_keeps_only_the_most_likely_token():
    logits = torch.tensor([[0.0, 2.0, 1.0, 1.5]])
    generator = torch.Generator().manual_seed(0)
    picks = {int(_choose(logits.clone(), torch.tensor([], dtype=torch.long), 1.0, 0.05, generator)) for _ in range(100)}
    assert picks == {1}


def test_models_the_decoder_does_not_follow_are_refused():
    from transformers import LlavaConfig, Qwen2_5_VLConfig

    check_supported(Qwen2_5_VLConfig(text_config=dict(num_hidden_layers=4)))
    sliding = Qwen2_5_VLConfig(text_config=dict(num_hidden_layers=4, use_sliding_window=True, max_window_layers=2,
                                                 sliding_window=64))
    with pytest.raises(ValueError, match="full-attention models only"):
        check_supported(sliding)
    with pytest.raises(ValueError, match="Qwen2-VL family"):
        check_supported(LlavaConfig())
