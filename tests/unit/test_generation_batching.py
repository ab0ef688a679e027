"""How generation work is cut into batches: hf length groups, and how many batches a generator holds."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.backends.hf import MAX_PADDING, length_groups
from engine.core.config import SynthConfig
from engine.synth.scheduler import inflight_batches


def padding_share(lengths: list[int]) -> float:
    padded = len(lengths) * max(lengths)
    return (padded - sum(lengths)) / padded


@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=80), st.integers(min_value=1, max_value=32))
def test_length_groups_cover_every_request_once_within_the_limits(lengths, batch_size):
    groups = length_groups(lengths, batch_size)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        assert 1 <= len(group) <= batch_size
        assert padding_share([lengths[i] for i in group]) <= MAX_PADDING + 1e-9


def test_first_attempts_and_retries_go_to_separate_batches():
    lengths = [690, 1950] * 8  # attempt-0 prompts interleaved with retries carrying three completions
    groups = length_groups(lengths, 16)
    assert sorted(sorted(g) for g in groups) == [list(range(0, 16, 2)), list(range(1, 16, 2))]


def test_similar_lengths_fill_whole_batches():
    lengths = [680 + i % 7 for i in range(40)]
    assert [len(g) for g in length_groups(lengths, 16)] == [16, 16, 8]


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=80),
       st.integers(min_value=1, max_value=32), st.integers(min_value=500, max_value=60_000))
def test_length_groups_keep_each_decode_cache_within_its_budget(lengths, batch_size, max_cache_tokens):
    new_tokens = 256
    capped = length_groups(lengths, batch_size, max_cache_tokens=max_cache_tokens, new_tokens=new_tokens)
    assert sorted(i for group in capped for i in group) == list(range(len(lengths)))
    for group in capped:
        longest = max(lengths[i] for i in group)
        assert len(group) == 1 or len(group) * (longest + new_tokens) <= max_cache_tokens
    # the budget only cuts the uncapped batches further, into near-equal consecutive parts
    for group in length_groups(lengths, batch_size):
        parts = [part for part in capped if part[0] in group]
        assert [i for part in parts for i in part] == group
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_long_retries_are_cut_into_halves_that_fit_the_budget():
    lengths = [3086] * 16  # attempt-5 prompts: 16 rows x 3,342 cache tokens is 52 MiB of fp32 KV here
    groups = length_groups(lengths, 16, max_cache_tokens=48 * 1024, new_tokens=256)
    assert [len(g) for g in groups] == [8, 8]
    assert [len(g) for g in length_groups([693] * 16, 16, max_cache_tokens=48 * 1024, new_tokens=256)] == [16]


def synth(**generation) -> SynthConfig:
    return SynthConfig.model_validate({"inflight_batches_per_generator": 2, "generation": generation})


def test_vllm_generator_holds_enough_batches_to_fill_its_running_batch():
    assert inflight_batches(synth(backend="vllm", batch_size=16, max_num_seqs=128)) == 8
    assert inflight_batches(synth(backend="vllm", batch_size=50, max_num_seqs=128)) == 3  # rounded up
    assert inflight_batches(synth(backend="vllm", batch_size=64, max_num_seqs=32)) == 2  # never below the setting


def test_hf_generator_holds_the_configured_batches():
    assert inflight_batches(synth(backend="hf", batch_size=16, max_num_seqs=256)) == 2
