"""The public Facial-R1 synthesis loop, re-implemented as the benchmark baseline (not an engine path).

What the public code does, and what this does the same way:
- one process, one image per `generate` call (batch 1), greedy decoding, a fixed max_new_tokens;
- the label-conditioned prompt ("Ground Truth" block) and up to `max_retries` retries in place, each
  retry carrying the previous response and the list of problems (engine.core.prompts.build_messages with
  hint and history: the very prompts the engine sends, so both sides do the same work);
- the filter after every attempt (engine.core.verifier, with the same policy as the engine run it is
  compared with);
- results kept in memory and written once, at the very end (accepted rows only, as JSONL).

Two things a random tiny model needs that the public code does not have, applied to both sides: the
vision special tokens are blocked (bad_words_ids), and the model runs in float32 on CPU (as the `hf`
backend does).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class BaselineResult:
    samples: int = 0
    accepted: int = 0
    rejected: int = 0
    attempts: int = 0
    generated_tokens: int = 0
    wall_seconds: float = 0.0  # the loop and the final write; model loading excluded
    attempts_histogram: dict[str, int] = field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds else 0.0


class SequentialSynthesizer:
    """Model loaded once; `run` synthesises a list of samples one at a time."""

    def __init__(self, model_dir: str, *, dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from engine.backends.tokens import blocked_token_ids

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        self.bad_words_ids = [[t] for t in blocked_token_ids(self.processor, self.model.config)] or None
        ids = self.model.generation_config.eos_token_id
        self.eos_ids = set(ids if isinstance(ids, list) else [ids])
        self.pad_id = self.processor.tokenizer.pad_token_id

    def generate_one(self, messages: Sequence[dict[str, Any]], image, max_new_tokens: int) -> tuple[str, int]:
        """One greedy completion for one image: (text, generated tokens up to and including eos)."""
        import torch

        text = self.processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      temperature=None, top_p=None, top_k=None,
                                      bad_words_ids=self.bad_words_ids, pad_token_id=self.pad_id)
        tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)

    def run(self, samples: Sequence, *, verifier_cfg, max_new_tokens: int, max_retries: int, hint: bool = True,
            out_path: str | Path | None = None) -> BaselineResult:
        from engine.backends.base import decode_image
        from engine.core.facs import label_set_for
        from engine.core.prompts import build_messages
        from engine.core.verifier import verify

        result = BaselineResult()
        accepted_rows: list[dict[str, Any]] = []
        histogram: dict[str, int] = {}
        start = time.perf_counter()
        for sample in samples:
            image = decode_image(sample.image)
            history: list[tuple[str, tuple[str, ...]]] = []
            label_set = label_set_for(sample.dataset)
            for attempt in range(max_retries + 1):
                messages = build_messages(sample, hint=hint, history=history)
                completion, tokens = self.generate_one(messages, image, max_new_tokens)
                result.generated_tokens += tokens
                result.attempts += 1
                verdict = verify(completion, sample.aus, sample.labels, verifier_cfg, sample_id=sample.id,
                                 attempt=attempt, label_set=label_set)
                if verdict.accepted:
                    accepted_rows.append({"id": sample.id, "dataset": sample.dataset, "image": sample.image_path,
                                          "AUs": list(sample.aus), "labels": list(sample.labels),
                                          "description": completion})
                    break
                history.append((completion, verdict.reasons))
            used = str(attempt + 1)
            histogram[used] = histogram.get(used, 0) + 1
            result.samples += 1
            result.accepted += bool(verdict.accepted)
            result.rejected += not verdict.accepted
        if out_path is not None:  # written once at the end, as the public code does
            Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in accepted_rows))
        result.wall_seconds = time.perf_counter() - start
        result.attempts_histogram = dict(sorted(histogram.items(), key=lambda kv: int(kv[0])))
        return result


def main() -> None:
    """Run the baseline alone (bench_synth.py runs it against the engine)."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import face_set, load_samples, tiny_model_dir
    from engine.core.config import VerifierConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--policy", choices=["strict", "paper"], default="strict")
    args = parser.parse_args()
    synth = SequentialSynthesizer(tiny_model_dir())
    samples = load_samples(face_set(max(args.samples, 64)), limit=args.samples)
    res = synth.run(samples, verifier_cfg=VerifierConfig(policy=args.policy), max_new_tokens=args.max_new_tokens,
                    max_retries=args.max_retries)
    print(json.dumps({**res.__dict__, "samples_per_second": res.samples_per_second,
                      "tokens_per_second": res.tokens_per_second}, indent=2))


if __name__ == "__main__":
    main()
