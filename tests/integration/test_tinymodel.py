"""The tiny offline Qwen2.5-VL: reproducible build, consistent special tokens, loads through the
Auto classes, and generates from a rendered face (transformers; vLLM on CPU when installed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.backends.tokens import blocked_token_ids
from engine.demo.render import render_face
from engine.demo.tinymodel import MARKER_FILE, VISION_TOKENS, build_tiny_model

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the emotion of this face?"}]}]
FACE = {"AU6": 0.8, "AU12": 1.0}  # a smile


@pytest.fixture(scope="module")
def processor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model):
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_is_byte_identical_for_a_seed_and_differs_across_seeds(tiny_model, tmp_path):
    again = Path(build_tiny_model(tmp_path / "again", seed=0))
    other = Path(build_tiny_model(tmp_path / "other", seed=1))
    first = _files(tiny_model)
    assert _files(again) == first  # every file, weights included
    assert {"model.safetensors", "tokenizer.json", "config.json", "processor_config.json", MARKER_FILE} <= set(first)
    other_files = _files(other)
    assert other_files["model.safetensors"] != first["model.safetensors"]
    assert other_files["tokenizer.json"] == first["tokenizer.json"]  # the tokenizer does not depend on the seed


def test_the_model_is_tiny_and_marked(tiny_model):
    size = sum(p.stat().st_size for p in tiny_model.iterdir())
    assert size < 5 * 2**20
    marker = json.loads((tiny_model / MARKER_FILE).read_text())
    assert marker["seed"] == 0 and marker["dtype"] == "bfloat16"
    assert 300_000 < marker["parameters"] < 3_000_000


def test_config_is_consistent_with_the_tokenizer(tiny_model, processor):
    config = json.loads((tiny_model / "config.json").read_text())
    text = config["text_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2  # else vLLM skips M-RoPE
    tok = processor.tokenizer
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        assert config[key] == tok.convert_tokens_to_ids(token), key
    assert text["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert text["pad_token_id"] == tok.pad_token_id
    assert len(tok) <= text["vocab_size"]
    assert blocked_token_ids(processor) == blocked_token_ids(tok) == sorted(tok.convert_tokens_to_ids(list(VISION_TOKENS)))


def test_tokenizer_round_trips_the_reasoning_format(processor):
    tok = processor.tokenizer
    text = "<think>The lip corners are pulled up (AU12) and the cheeks are raised (AU6).</think><answer>happiness</answer>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # trained merges, not bytes
    assert tok.decode(tok("ünïcödé ☺")["input_ids"]) == "ünïcödé ☺"  # byte-level: nothing is unknown


def test_chat_template_and_image_tokens(processor):
    prompt = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>What is the emotion of this face?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    encoded = processor(text=[prompt], images=[render_face(FACE)], return_tensors="pt")
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((encoded["input_ids"] == image_pad).sum()) == 16  # 112x112 -> 8x8 patches -> 4x4 merged


def test_transformers_generates_text_from_a_face_without_vision_tokens(processor, model):
    import torch

    prompt = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    faces = [render_face(FACE), render_face({"AU1": 0.9, "AU4": 0.8, "AU15": 1.0})]
    batch = processor(text=[prompt] * 2, images=faces, return_tensors="pt", padding=True)
    blocked = blocked_token_ids(processor)
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=48, min_new_tokens=48, do_sample=True, temperature=1.0,
                             bad_words_ids=[[i] for i in blocked])
    new = out[:, batch["input_ids"].shape[1]:]
    assert new.shape == (2, 48)
    assert not set(new.flatten().tolist()) & set(blocked)
    texts = processor.batch_decode(new, skip_special_tokens=True)
    assert all(isinstance(t, str) and t.strip() for t in texts)
    with torch.inference_mode():  # greedy decoding is reproducible
        greedy = [model.generate(**batch, max_new_tokens=8, do_sample=False, bad_words_ids=[[i] for i in blocked])
                  for _ in range(2)]
    assert torch.equal(greedy[0], greedy[1])


@pytest.mark.vllm
def test_vllm_generates_from_a_face_on_cpu(tiny_model, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(tiny_model), dtype="bfloat16", max_model_len=1024, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"image": 1, "video": 0}, max_num_seqs=4)
    try:
        tokenizer = llm.get_tokenizer()
        blocked = blocked_token_ids(tokenizer)
        prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
        params = SamplingParams(max_tokens=32, min_tokens=32, temperature=1.0, seed=0,
                                logit_bias={token: -100.0 for token in blocked})
        [result] = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": render_face(FACE)}}], params,
                                use_tqdm=False)
        completion = result.outputs[0]
        assert len(completion.token_ids) == 32
        assert not set(completion.token_ids) & set(blocked)
        image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert result.prompt_token_ids.count(image_pad) == 16
    finally:
        del llm
