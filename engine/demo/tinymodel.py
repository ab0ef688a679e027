"""A tiny random-weight Qwen2.5-VL built offline: the model of the embedded default world.

It has the real architecture (so every code path that serves Qwen2.5-VL-7B serves it: transformers,
vLLM, TRL, PEFT) at about a million parameters. Its byte-level BPE tokenizer is trained here on
text generated from the project's own vocabularies, so the build needs no download and gives the
same files for the same seed on any machine with the same library versions.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.backends.tokens import blocked_token_ids

MARKER_FILE = "fea_tiny_model.json"
BUILD_FORMAT = 1

# Qwen2.5's special tokens, appended after the BPE vocabulary as in the real tokenizer.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Tokens only the processor may place: a sampled one breaks the image-token count of the next prompt.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

BPE_VOCAB_SIZE = 2034  # + 14 special tokens = 2048
MIN_PIXELS, MAX_PIXELS = 56 * 56, 448 * 448
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2

TEXT_CONFIG = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1,  # head_dim 64: the size CPU attention kernels support
    max_position_embeddings=4096, rms_norm_eps=1e-6, hidden_act="silu",
    # vLLM only applies M-RoPE when mrope_section is here and sums to head_dim / 2.
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
    use_sliding_window=False, max_window_layers=2, tie_word_embeddings=False,
)
VISION_CONFIG = dict(
    depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, in_channels=3,
    patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
    window_size=112, fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu",
)

# Qwen2.5-VL's chat template, reduced to what the engine sends: text and image/video parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_EMOTION_ADJECTIVES = "angry contemptuous disgusted fearful scared afraid happy joyful sad surprised calm"
_GENERIC_ENGLISH = (
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "A photograph shows a person looking at the camera in front of a plain coloured wall.",
    "Please describe what you see in the image and explain your reasoning step by step.",
    "First look at the eyes, then at the mouth, and finally at the whole face before you decide.",
    "The model reads the picture, writes a short analysis and gives one final word as the answer.",
    "People show their feelings with small movements of the muscles around the eyes, nose and mouth.",
    "An expression can be strong or subtle; the same movement may appear on one side or on both sides.",
    "This is a simple sentence. That is another one. Here are some numbers: 0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 26.",
    "You are a helpful assistant. The user asks a question and the assistant answers it clearly.",
    "Good answers are short, precise and grounded in what is visible in the picture.",
    "The left side of the face and the right side of the face can move differently.",
    "Light, shadow, colour and shape help to read a face; the background does not matter.",
)


def tokenizer_corpus() -> Iterator[str]:
    """Training text for the tokenizer, generated from the project's vocabularies: the AU
    definitions, emotion words, the prompt's wording, template reasoning, and generic English."""
    import numpy as np

    from engine.core.facs import AU_DESCRIPTIONS, EMOTIONS, PROTOTYPES
    from engine.demo import faces
    from engine.demo.descriptions import describe

    definitions = "; ".join(f"{au} {name}" for au, name in AU_DESCRIPTIONS.items())
    for _ in range(8):
        yield definitions
        yield " ".join(f"{name} ({au})" for au, name in AU_DESCRIPTIONS.items())
        yield "Answer with one word: " + ", ".join(EMOTIONS) + ". " + _EMOTION_ADJECTIVES
        yield from _GENERIC_ENGLISH
        yield from _prompt_wording()
    rng = np.random.default_rng(0)  # fixed: the corpus is part of the model's definition, not of the seed
    for index in range(400):
        emotion = EMOTIONS[index % len(EMOTIONS)]
        aus = faces.sample_expression(emotion, rng)
        style = faces.sample_style(emotion, rng)
        yield describe(emotion, aus, style, rng)
        yield " ".join(f"{au}: {AU_DESCRIPTIONS[au]}" for au in PROTOTYPES[emotion])


def _prompt_wording() -> tuple[str, ...]:
    """The gist of the engine's prompt wording (instruction, retry and hint blocks). Kept here rather
    than read from engine.core.prompts so that editing a prompt does not change the model's tokenizer."""
    return (
        "Analyze the facial expression in the image. Describe the observable facial features with the "
        "Action Unit numbers in parentheses, such as brows pulled together (AU4), then explain how they "
        "indicate the emotion. Avoid negative or uncertain words. Put the analysis inside <think> </think> "
        "and the final emotion, a single word, inside <answer> </answer>.",
        "Your previous response had these problems: wrong action units, wrong label, missing tags. "
        "Try again and follow the format exactly.",
        "Ground Truth: the analysis must identify these action units; the final answer must be this emotion.",
        "<think>The brows are lowered and drawn together (AU4) and the lips are pressed (AU24), which "
        "indicates anger.</think><answer>anger</answer>",
    )


def _train_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _hf_tokenizer(texts: list[str]) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(texts), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=4096, padding_side="left", clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def _model_config(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vocab_size = -(-len(tokenizer) // 64) * 64  # rounded up like real checkpoints
    config = Qwen2_5_VLConfig(
        text_config={**TEXT_CONFIG, "vocab_size": vocab_size, **special}, vision_config=VISION_CONFIG,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False, **special,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _random_model(config: Any, seed: int) -> Any:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(torch.bfloat16)  # what vLLM on CPU runs; transformers upcasts on request
    generation = model.generation_config
    generation.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    generation.pad_token_id = config.text_config.pad_token_id
    generation.bos_token_id = config.text_config.bos_token_id
    return model


def _processor(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    geometry = dict(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, **geometry)
    video_processor = Qwen2VLVideoProcessor(**geometry)  # unused, but the processor requires one
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_tiny_model(out_dir: str | Path, seed: int = 0, perception_steps: int = 0) -> str:
    """Write a tiny Qwen2.5-VL (weights, tokenizer, processor, chat template) to out_dir and return its
    path: random weights, then `perception_steps` of perception pretraining (engine.demo.perception)
    when asked. Same seed and steps -> the same weights and tokenizer."""
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(tokenizer_corpus())
    tokenizer = _hf_tokenizer(texts)
    model = _random_model(_model_config(tokenizer), seed)
    model.save_pretrained(out)
    _processor(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {
        "builder": "engine.demo.tinymodel.build_tiny_model",
        "format": BUILD_FORMAT,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "bfloat16",
        "vocab_size": model.config.text_config.vocab_size,
        "tokenizer_size": len(tokenizer),
        "corpus_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "blocked_token_ids": blocked_token_ids(tokenizer, model.config),
        "transformers_version": transformers.__version__,
    }
    if perception_steps > 0:
        from engine.demo.perception import PerceptionSettings, pretrain_perception

        marker["perception"] = pretrain_perception(out, PerceptionSettings(steps=perception_steps, seed=seed))
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")  # written last: the build is done
    return str(out)
