"""GPU measurements in one self-contained script: generation tokens/s at batch 1 (the paper's
sequential loop) vs 16 vs 64, and the step time of a LoRA SFT step, for the tiny model and a
"small" (~140M parameter) Qwen2.5-VL built from a config with random weights, in bf16.

Needs only torch, transformers, peft, tokenizers, PIL and numpy (no trl, datasets, vllm, ray or
pydantic): the engine modules it imports (tinymodel, faces, prompts, facs, types) need nothing else.
Prints a table and writes JSON to $OUT/gpu_results.json (or FOLDER/gpu_results.json with --out FOLDER).

    python bench/gpu_device.py                 # on a GPU machine
    python bench/gpu_device.py --cpu --quick   # a quick check of every code path on CPU

Generation: the attempt-0 synthesis prompt (label hint) with one 112x112 synthetic face per row,
greedy, exactly --new-tokens tokens per row (min_new_tokens = max_new_tokens, so every batch size
does the same work), vision special tokens blocked. One warm-up call per batch size is not timed.
SFT: plain torch loop, PEFT LoRA (r16, alpha 32) on the language model's projections, AdamW, loss
on the completion tokens only, rows = evaluation prompt (no hint) + image + reference reasoning.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# "small": a 12-layer, 768-wide language model and an 8-block vision tower (~140M parameters).
SMALL_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=2, max_window_layers=12)  # head_dim stays 64: mrope_section still fits
SMALL_VISION = dict(depth=8, hidden_size=512, intermediate_size=2048, num_heads=8, out_hidden_size=768,
                    fullatt_block_indexes=[3, 7])


# ---------------------------------------------------------------- models and inputs
def build_models(workdir: Path, which: list[str]) -> dict[str, str]:
    """Folders for the requested models (tiny: the engine's builder; small: tiny's tokenizer and
    processor with a larger config and random weights)."""
    from engine.demo.tinymodel import build_tiny_model

    tiny = build_tiny_model(workdir / "tiny", seed=0)
    folders = {"tiny": tiny}
    if "small" in which:
        folders["small"] = build_small(tiny, workdir / "small")
    return {name: folders[name] for name in which}


def build_small(tiny_dir: str, out: Path) -> str:
    import shutil

    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(tiny_dir)
    for key, value in SMALL_TEXT.items():
        setattr(config.text_config, key, value)
    # derived from the layer count when a config is built: rebuilt for the new count
    config.text_config.layer_types = ["full_attention"] * SMALL_TEXT["num_hidden_layers"]
    for key, value in SMALL_VISION.items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in os.listdir(tiny_dir):  # tokenizer, processor and chat template files
        if name.endswith(".json") and name not in ("config.json", "generation_config.json") or name.endswith(".jinja"):
            shutil.copy(os.path.join(tiny_dir, name), out / name)
    return str(out)


def face_samples(n: int) -> list:
    """n synthetic labelled faces as engine Samples (rendered in memory)."""
    from engine.demo.faces import _emotions_and_prototypes, make_record, png_bytes
    from engine.core.types import Sample, sha256_hex

    emotions, _ = _emotions_and_prototypes()
    samples = []
    for index in range(n):
        record, image = make_record(index, 0, emotions)
        data = png_bytes(image)
        samples.append(Sample(id=record["id"], dataset=record["dataset"], image=data, image_sha256=sha256_hex(data),
                              image_path=record["image"], question=record["question"], aus=tuple(record["AUs"]),
                              labels=tuple(record["labels"]), description=record["description"]))
    return samples


def pil(sample):
    from PIL import Image

    with Image.open(io.BytesIO(sample.image)) as img:
        return img.convert("RGB")


def load(model_dir: str, device: str, dtype):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device)
    return processor, model


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- generation
def generation(model_dir: str, samples: list, batch_sizes: list[int], rows: int, new_tokens: int, device: str,
               dtype) -> list[dict[str, Any]]:
    import torch

    from engine.core.prompts import build_messages
    from engine.backends.tokens import blocked_token_ids

    processor, model = load(model_dir, device, dtype)
    model.eval()
    bad = [[t] for t in blocked_token_ids(processor, model.config)]
    texts = [processor.apply_chat_template(list(build_messages(s, hint=True)), add_generation_prompt=True,
                                           tokenize=False) for s in samples]
    images = [pil(s) for s in samples]

    def run(start: int, bs: int) -> int:
        idx = [(start + k) % len(samples) for k in range(bs)]
        inputs = processor(text=[texts[i] for i in idx], images=[images[i] for i in idx], return_tensors="pt",
                           padding=True).to(device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, bad_words_ids=bad,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        return int((out.shape[1] - inputs["input_ids"].shape[1]) * bs)

    results = []
    for bs in batch_sizes:
        calls = max(1, rows // bs)
        run(0, bs)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        tokens = sum(run(c * bs, bs) for c in range(calls))
        sync(device)
        seconds = time.perf_counter() - t0
        results.append({"batch": bs, "calls": calls, "rows": calls * bs, "new_tokens": new_tokens,
                        "generated_tokens": tokens, "seconds": round(seconds, 4),
                        "tokens_per_s": round(tokens / seconds, 1), "rows_per_s": round(calls * bs / seconds, 3),
                        "peak_mem_gb": _peak_mem(device)})
    base = results[0]["tokens_per_s"]
    for r in results:
        r["speedup_vs_batch1"] = round(r["tokens_per_s"] / base, 2)
    del model
    _free(device)
    return results


# ---------------------------------------------------------------- LoRA SFT step
def sft_batch(processor, samples: list, device: str):
    """Tokenised rows with labels masked to the completion (the prompt and padding are -100)."""
    from engine.core.prompts import build_messages

    prompts, fulls = [], []
    for s in samples:
        messages = list(build_messages(s, hint=False))
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(prompt)
        fulls.append(prompt + s.description + "<|im_end|>\n")
    images = [pil(s) for s in samples]
    processor.tokenizer.padding_side = "right"
    batch = processor(text=fulls, images=images, return_tensors="pt", padding=True)
    prompt_lens = [len(x) for x in processor(text=prompts, images=images, padding=False)["input_ids"]]
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = -100
    batch["labels"] = labels
    return batch.to(device)


def sft_steps(model_dir: str, samples: list, batch_size: int, steps: int, warmup: int, device: str,
              dtype) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    processor, model = load(model_dir, device, dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS,
                      exclude_modules=r".*(visual).*", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, losses, tokens = [], [], 0
    for step in range(steps + warmup):
        rows = [samples[(step * batch_size + k) % len(samples)] for k in range(batch_size)]
        batch = sft_batch(processor, rows, device)
        sync(device)
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            tokens += int(batch["attention_mask"].sum())
        losses.append(float(loss.detach()))
    result = {"batch": batch_size, "steps": steps, "warmup_steps": warmup, "trainable_params": trainable,
              "median_step_s": round(statistics.median(times), 5), "mean_step_s": round(sum(times) / len(times), 5),
              "train_tokens_per_s": round(tokens / sum(times), 1), "first_loss": round(losses[0], 4),
              "last_loss": round(losses[-1], 4), "peak_mem_gb": _peak_mem(device)}
    del model, optimizer
    _free(device)
    return result


# ---------------------------------------------------------------- helpers and main
def _peak_mem(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def describe_machine(device: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    info = {"device": device, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "cores": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU (fp32) even when a GPU is present")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks every code path in seconds")
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--rows", type=int, default=64, help="rows generated per batch size (batch 1: this many calls)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=10)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_results.json")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rows, args.new_tokens, args.sft_batch, args.sft_steps = "1,4", 4, 8, 2, 2

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batches = [int(b) for b in args.batches.split(",")]
    which = [m.strip() for m in args.models.split(",") if m.strip()]
    results: dict[str, Any] = {"machine": describe_machine(device), "dtype": str(dtype).replace("torch.", ""),
                               "settings": vars(args), "models": {}}
    samples = face_samples(max(64, max(batches)))
    with tempfile.TemporaryDirectory(prefix="fea-gpu-bench-") as tmp:
        t0 = time.perf_counter()
        folders = build_models(Path(tmp), which)
        results["build_seconds"] = round(time.perf_counter() - t0, 2)
        for name, folder in folders.items():
            from transformers import AutoConfig

            params = _count_params(folder)
            print(f"\n== {name}: {params / 1e6:.1f}M parameters, {device}, {results['dtype']}", flush=True)
            gen = generation(folder, samples, batches, args.rows, args.new_tokens, device, dtype)
            print(table(gen), flush=True)
            sft = sft_steps(folder, samples, args.sft_batch, args.sft_steps, 2 if not args.quick else 1, device, dtype)
            print(table([sft]), flush=True)
            text = AutoConfig.from_pretrained(folder).text_config
            results["models"][name] = {"parameters": params, "text_hidden_size": text.hidden_size,
                                       "text_layers": text.num_hidden_layers, "generation": gen, "lora_sft": sft}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'gpu_results.json'}")


def _count_params(folder: str) -> int:
    from safetensors import safe_open

    total = 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                for key in f.keys():
                    total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


if __name__ == "__main__":
    main()
