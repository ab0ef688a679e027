"""The hf backend serves any model AutoModelForImageTextToText loads: a second family (a tiny random
LLaVA, built offline) goes through transformers' generate, and on the tiny Qwen2.5-VL the engine's
own decoding and plain generate give the same greedy completions."""
from __future__ import annotations

import pytest

from engine.backends.base import create
from engine.core.config import GenerationConfig
from engine.core.prompts import make_request
from engine.core.types import SamplingParams
from engine.data.dataset import load_input

EARLIER = "<think>The brows are raised, AU1 AU2.</think><answer>surprise</answer>"


@pytest.fixture(scope="module")
def tiny_llava(tiny_model, tmp_path_factory):
    from tests.support.tiny_llava import build_tiny_llava

    return build_tiny_llava(tiny_model, tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def requests(faces):
    """Attempt-0 requests and retries that carry two earlier completions (longer prompts), mixed."""
    samples = [s for s in load_input(str(faces / "samples.jsonl")) if hasattr(s, "image")][:5]
    return [make_request(s, 2 if k % 2 else 0, hint=True, style="compact",
                         history=[(EARLIER, ("label_mismatch:surprise!=sadness",))] * (2 if k % 2 else 0))
            for k, s in enumerate(samples)]


def one_at_a_time(model_dir, request, max_new_tokens: int, bad_words_ids, eos_ids) -> tuple[str, int]:
    """transformers' generate on one prompt, no padding: the reference for a batched backend."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from engine.backends.base import decode_image

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = processor.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[decode_image(request.image)], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, bad_words_ids=bad_words_ids,
                             eos_token_id=sorted(eos_ids), pad_token_id=processor.tokenizer.pad_token_id)
    alone = out[0, inputs["input_ids"].shape[1]:].tolist()
    stop = next((k + 1 for k, t in enumerate(alone) if t in eos_ids), len(alone))
    return processor.tokenizer.decode(alone[:stop], skip_special_tokens=True), stop


def test_a_llava_model_generates_through_transformers(tiny_llava, requests):
    backend = create("hf", str(tiny_llava), None, GenerationConfig(backend="hf", batch_size=5))
    try:
        assert not backend.own_decoding
        image_token = backend.model.config.image_token_index
        assert [image_token] in backend.bad_words_ids  # the model's own placeholder is never generated
        results = backend.generate(requests, SamplingParams(max_new_tokens=12))
        assert [[a.sample_id for a in attempts] for attempts in results] == [[r.sample_id] for r in requests]
        for request, [attempt] in zip(requests, results):
            assert (attempt.backend, attempt.model_id, attempt.prompt_hash) == ("hf", backend.model_id,
                                                                                request.prompt_hash)
            text, tokens = one_at_a_time(tiny_llava, request, 12, backend.bad_words_ids, backend.eos_ids)
            assert (attempt.completion, attempt.completion_tokens) == (text, tokens), request.key
            assert attempt.finish_reason == ("stop" if tokens < 12 else "length")
        assert backend.decode_batches >= 1 and backend.prompt_tokens > 0
    finally:
        backend.close()


def test_a_llava_model_samples_n_completions_per_request(tiny_llava, requests):
    backend = create("hf", str(tiny_llava), None, GenerationConfig(backend="hf", batch_size=4))
    try:
        params = SamplingParams(max_new_tokens=10, temperature=1.0, n=2, seed=3)
        results = backend.generate(requests[:3], params)
        assert [len(attempts) for attempts in results] == [2, 2, 2]
        assert all(0 < a.completion_tokens <= 10 for attempts in results for a in attempts)
        assert any(first.completion != second.completion for first, second in results)
        again = backend.generate(requests[:3], params)  # the seed makes sampling repeatable
        assert [[a.completion for a in attempts] for attempts in again] == [[a.completion for a in attempts]
                                                                           for attempts in results]
    finally:
        backend.close()


def test_own_decoding_and_plain_generate_agree_on_qwen(tiny_model, requests):
    """The fast path is an optimisation only: on its model family, greedy completions equal generate's."""
    completions = {}
    for decoder in ("auto", "generate"):
        backend = create("hf", str(tiny_model), None,
                                  GenerationConfig(backend="hf", batch_size=5, hf_decoder=decoder))
        try:
            assert backend.own_decoding == (decoder == "auto")
            results = backend.generate(requests, SamplingParams(max_new_tokens=16))
            completions[decoder] = [(a.completion, a.completion_tokens, a.finish_reason) for [a] in results]
        finally:
            backend.close()
    assert completions["auto"] == completions["generate"]


def test_fea_synth_runs_on_a_llava_model(ray_local, tiny_llava, faces, tmp_path):
    """The synthesis job's generator actors serve the second family too; every input is accounted for."""
    import json

    from engine.core.config import SynthConfig
    from engine.data.commits import committed_shard_uris
    from engine.data import shards
    from engine.synth.job import run_synth

    lines = (faces / "samples.jsonl").read_text().splitlines()[:4]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    cfg = SynthConfig.model_validate(dict(
        input=str(tmp_path / "in.jsonl"), image_root=str(faces), out=out, model={"path": str(tiny_llava)},
        partition_size=2, max_retries=1, progress="off", prompt_style="compact",
        generation={"backend": "hf", "max_new_tokens": 8, "batch_size": 4}))
    summary = run_synth(cfg)
    assert summary["inputs"] == 4 and summary["accepted"] + summary["rejected"] == 4
    assert summary["model_ids"][0].startswith(tiny_llava.name + "@") and summary["generated_tokens"] > 0
    rejected = [row for uri in committed_shard_uris(out, "rejected", "parquet")
                for row in shards.iter_parquet_rows(uri)]
    assert sorted(r["id"] for r in rejected) == sorted(json.loads(line)["id"] for line in lines)
    assert all(a["reasons"] for r in rejected for a in r["attempts"])
