"""Generator backends on the tiny model, called in this process: results come back per request, in
request order, however the backend regrouped or interleaved the work."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine import backends
from engine.config import GenerationConfig
from engine.dataset import load_input
from engine.prompts import make_request
from engine.types import SamplingParams

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
    backend = backends.create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=6))
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
    backend = backends.create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=4))
    try:
        results = backend.generate(mixed_requests, SamplingParams(max_new_tokens=12, temperature=1.0, n=2, seed=3))
    finally:
        backend.close()
    assert_one_result_per_request(mixed_requests, results, n=2)
    assert all(0 < a.completion_tokens <= 12 for attempts in results for a in attempts)
    # sampled, not copied: the two completions of a request differ somewhere
    assert any(first.completion != second.completion for first, second in results)


def test_hf_batched_greedy_completions_equal_plain_generate_one_at_a_time(tiny_model, mixed_requests):
    """The backend's batching, left padding and preallocated KV cache change the cost, not the tokens:
    each completion equals transformers generate on that prompt alone with its default cache."""
    import torch

    from engine.backends.base import decode_image

    backend = backends.create("hf", str(tiny_model), None, GenerationConfig(backend="hf", batch_size=6))
    try:
        results = backend.generate(mixed_requests, SamplingParams(max_new_tokens=24))
        processor, model = backend.processor, backend.model
        for request, attempts in zip(mixed_requests, results):
            text = processor.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], images=[decode_image(request.image)], return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=24, do_sample=False, bad_words_ids=backend.bad_words_ids,
                                     pad_token_id=processor.tokenizer.pad_token_id)
            alone = out[0, inputs["input_ids"].shape[1]:].tolist()
            stop = next((k + 1 for k, t in enumerate(alone) if t in backend.eos_ids), len(alone))
            assert attempts[0].completion == processor.tokenizer.decode(alone[:stop], skip_special_tokens=True)
            assert attempts[0].completion_tokens == stop
    finally:
        backend.close()


@pytest.mark.vllm
def test_vllm_serves_concurrent_batches_and_refuses_only_the_bad_prompt(tiny_model, mixed_requests):
    backend = backends.create("vllm", str(tiny_model), None,
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
