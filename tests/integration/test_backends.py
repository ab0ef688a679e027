"""Generator backends on the tiny model, called in this process: results come back per request, in
request order, however the backend regrouped or interleaved the work."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine.backends.base import create
from engine.core.config import GenerationConfig
from engine.data.dataset import load_input
from engine.core.prompts import make_request
from engine.core.types import SamplingParams

EARLIER = "<think>The brows are raised, AU1 AU2.</think><answer>surprise</answer>"


@pytest.fixture(scope="module")
def mixed_requests(faces):
    """Attempt-0 requests interleaved with retries that carry three earlier completions (longer prompts)."""
    samples = [s for s in load_input(str(faces / "samples.jsonl")) if hasattr(s, "image")][:6]
    return [make_request(s, 3 if k % 2 else 0, hint=True, history=[(EARLIER * 4, ("wrong_label",))] * (3 if k % 2 else 0))
            for k, s in enumerate(samples)]


def assert_one_result_per_request(requests, results, n=1):
    assert len(results) == len(requests)
    for request, attempts in zip(requests, results):
        assert len(attempts) == n
        assert all((a.sample_id, a.attempt, a.prompt_hash) == (request.sample_id, request.attempt, request.prompt_hash)
                   for a in attempts)


def test_hf_regroups_by_prompt_length_and_answers_in_request_order(tiny_model, mixed_requests):
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=6))
    try:
        results = backend.generate(mixed_requests, SamplingParams(max_new_tokens=2))
    finally:
        backend.close()
    assert_one_result_per_request(mixed_requests, results)
    first = {a[0].prompt_tokens for a, r in zip(results, mixed_requests) if r.attempt == 0}
    retries = {a[0].prompt_tokens for a, r in zip(results, mixed_requests) if r.attempt == 3}
    # each row counts its own prompt, not the padded batch width
    assert max(first) < min(retries)


def test_hf_samples_n_completions_per_request(tiny_model, mixed_requests):
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=4))
    try:
        results = backend.generate(mixed_requests, SamplingParams(max_new_tokens=12, temperature=1.0, n=2, seed=3))
    finally:
        backend.close()
    assert_one_result_per_request(mixed_requests, results, n=2)
    assert all(0 < a.completion_tokens <= 12 for attempts in results for a in attempts)
    # sampled, not copied: the two completions of a request differ somewhere
    assert any(first.completion != second.completion for first, second in results)


@pytest.fixture(scope="module")
def plain_generate(tiny_model):
    """transformers generate on one prompt at a time, stock attention and default cache: the reference
    the hf backend's own prefill/decode must reproduce token for token."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from engine.backends.base import decode_image

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def generate(request, max_new_tokens, bad_words_ids, eos_ids):
        text = processor.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[decode_image(request.image)], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 bad_words_ids=bad_words_ids, pad_token_id=processor.tokenizer.pad_token_id)
        alone = out[0, inputs["input_ids"].shape[1]:].tolist()
        stop = next((k + 1 for k, t in enumerate(alone) if t in eos_ids), len(alone))
        return processor.tokenizer.decode(alone[:stop], skip_special_tokens=True), stop

    return generate


def assert_equal_to_plain_generate(backend, requests, results, plain_generate, max_new_tokens):
    for request, attempts in zip(requests, results):
        text, tokens = plain_generate(request, max_new_tokens, backend.bad_words_ids, backend.eos_ids)
        assert (attempts[0].completion, attempts[0].completion_tokens) == (text, tokens), request.key


def test_hf_batched_greedy_completions_equal_plain_generate_one_at_a_time(tiny_model, mixed_requests, plain_generate):
    """Batching, per-prompt prefill, batched decoding and the grouped-query decode attention change
    the cost, not the tokens."""
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=6))
    try:
        results = backend.generate(mixed_requests, SamplingParams(max_new_tokens=24))
        assert_equal_to_plain_generate(backend, mixed_requests, results, plain_generate, 24)
    finally:
        backend.close()


def test_hf_decode_cache_budget_cuts_batches_without_changing_tokens(tiny_model, mixed_requests):
    """generation.decode_cache_mb bounds the KV one decode batch holds: at 1 MiB every row of the tiny
    model (1 KiB of fp32 KV per token, 700-2,700-token prompts) decodes alone, with the same tokens."""
    from engine.backends import hf_decode

    params = SamplingParams(max_new_tokens=16)
    runs = {}
    for mb in (0, 1):
        backend = create("hf", str(tiny_model), None,
                                  GenerationConfig(backend="hf", batch_size=6, decode_cache_mb=mb))
        try:
            results = backend.generate(mixed_requests, params)
            runs[mb] = ([a[0].completion for a in results], backend.decode_batches)
            kept = backend.prefix_cache._entries.values()
            assert all(seq.nbytes == hf_decode.kv_bytes_per_token(backend.model) * seq.keys[0].shape[1] for seq in kept)
        finally:
            backend.close()
    assert runs[0][1] == 2  # attempt-0 prompts and retries
    assert runs[1][1] == len(mixed_requests)
    assert runs[1][0] == runs[0][0]


def test_hf_retry_prefills_only_its_new_turn_and_still_equals_plain_generate(tiny_model, faces, plain_generate):
    """A retry repeats its sample's previous prompt and completion: the backend serves that prefix from
    the KV it kept, and the completion is the one a full prefill gives."""
    samples = [s for s in load_input(str(faces / "samples.jsonl")) if hasattr(s, "image")][:3]
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=3))
    params = SamplingParams(max_new_tokens=32)
    try:
        first = [make_request(s, 0, hint=True) for s in samples]
        first_results = backend.generate(first, params)
        assert backend.reused_tokens == 0
        retries = [make_request(s, 1, hint=True, history=[(a[0].completion, ("wrong_label",))])
                   for s, a in zip(samples, first_results)]
        results = backend.generate(retries, params)
        # at least each attempt-0 prompt (image included) came from the cache
        assert backend.reused_tokens >= sum(a[0].prompt_tokens for a in first_results)
        assert backend.reused_tokens < backend.prompt_tokens
        assert_equal_to_plain_generate(backend, retries, results, plain_generate, 32)
    finally:
        backend.close()


def test_hf_without_kv_reuse_prefills_everything(tiny_model, faces):
    samples = [s for s in load_input(str(faces / "samples.jsonl")) if hasattr(s, "image")][:2]
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf", kv_reuse_mb=0))
    try:
        first = backend.generate([make_request(s, 0, hint=True) for s in samples], SamplingParams(max_new_tokens=8))
        backend.generate([make_request(s, 1, hint=True, history=[(a[0].completion, ("wrong_label",))])
                          for s, a in zip(samples, first)], SamplingParams(max_new_tokens=8))
        assert backend.reused_tokens == 0 and backend.prompt_tokens > 0
    finally:
        backend.close()


def test_hf_reports_an_undecodable_image_on_its_request_and_serves_the_others(tiny_model, mixed_requests):
    broken = dataclasses.replace(mixed_requests[1], image=b"not an image")
    requests = [mixed_requests[0], broken, mixed_requests[2]]
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf"))
    try:
        results = backend.generate(requests, SamplingParams(max_new_tokens=4))
    finally:
        backend.close()
    assert_one_result_per_request(requests, results)
    assert results[1][0].error.startswith("image_undecodable:") and results[1][0].completion == ""
    assert all(r[0].error is None and r[0].completion_tokens > 0 for r in (results[0], results[2]))


def test_hf_runs_in_the_dtype_asked_for_with_kept_kv_and_sampling(tiny_model, faces):
    """bfloat16, the GPU default, on CPU: the model is loaded in it, retries reuse the kept KV and
    n > 1 sampling works (`model.dtype` reaches the backend through `create`)."""
    import torch

    samples = [s for s in load_input(str(faces / "samples.jsonl")) if hasattr(s, "image")][:3]
    backend = create("hf", str(tiny_model), None, GenerationConfig(backend="hf"), dtype="bfloat16")
    try:
        assert backend.model.dtype == torch.bfloat16
        first = backend.generate([make_request(s, 0, hint=True) for s in samples], SamplingParams(max_new_tokens=12))
        retries = [make_request(s, 1, hint=True, history=[(a[0].completion, ("wrong_label",))])
                   for s, a in zip(samples, first)]
        results = backend.generate(retries, SamplingParams(max_new_tokens=12, temperature=1.0, n=2, seed=5))
        assert_one_result_per_request(retries, results, n=2)
        assert backend.reused_tokens >= sum(a[0].prompt_tokens for a in first)
    finally:
        backend.close()


@pytest.mark.vllm
def test_vllm_serves_concurrent_batches_and_refuses_only_the_bad_prompt(tiny_model, mixed_requests):
    backend = create("vllm", str(tiny_model), None,
                              GenerationConfig(backend="vllm", max_model_len=2048, max_num_seqs=8))
    too_long = dataclasses.replace(mixed_requests[0], key="too-long#0", messages=(
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "face " * 3000}]},))
    params = SamplingParams(max_new_tokens=4)
    batches = [mixed_requests[:3], [too_long, *mixed_requests[3:]]]

    async def both():
        return await asyncio.gather(*(backend.generate_async(batch, params) for batch in batches))

    try:
        concurrent = asyncio.run(both())
        blocking = backend.generate(mixed_requests[:2], params)  # the same engine, from a plain caller
    finally:
        backend.close()
    for batch, results in zip(batches, concurrent):
        assert_one_result_per_request(batch, results)
    refused = concurrent[1][0][0]
    assert refused.error.startswith("prompt_rejected:") and refused.completion == ""
    others = [a[0] for results in concurrent for a in results if a[0] is not refused]
    assert len(others) == len(mixed_requests)
    assert all(not a.error and 1 <= a.completion_tokens <= 4 and a.prompt_tokens > 0 for a in others)
    assert_one_result_per_request(mixed_requests[:2], blocking)
    assert backend.engine is None  # closed: engine core and loop thread stopped
