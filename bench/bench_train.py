"""Training step time (item 7): `fea train sft|grpo` (trainer.sft.run_sft / trainer.grpo.run_grpo)
against plain TRL (SFTTrainer / GRPOTrainer built directly) with the same model, data rows, LoRA and
settings, on the tiny model on CPU. Target: ours at most 1.1x plain TRL's step time.

Step times come from a transformers TrainerCallback (step begin -> step end) that this script adds to
transformers' default callbacks, so run_sft/run_grpo are timed unchanged. Steady state: the first
`--warmup-steps` steps of every run are dropped (first-call allocations, dataset start), the median
of the rest is the run's step time; set-up and the final save are outside the steps. Ours and plain
TRL alternate, same number of steps.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

TARGET = 1.1
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StepTimes:
    """A TrainerCallback (built lazily: transformers is imported inside) collecting step wall times."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        times: list[float] = []
        self.times = times

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter() - self.t0)

        self.callback = _Timer

    def __enter__(self) -> "StepTimes":
        import transformers.trainer as hf_trainer

        self.times.clear()
        hf_trainer.DEFAULT_CALLBACKS.append(self.callback)
        return self

    def __exit__(self, *exc) -> None:
        import transformers.trainer as hf_trainer

        hf_trainer.DEFAULT_CALLBACKS.remove(self.callback)


def steady(times: list[float], warmup: int) -> float:
    return common.median(times[warmup:])


# ---------------------------------------------------------------- shared settings
def settings(args) -> dict[str, Any]:
    return dict(max_steps=args.steps, learning_rate=1e-4, lr_scheduler_type="constant", seed=42,
                per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, logging_steps=1,
                report_to=["none"], save_strategy="no", dataloader_num_workers=0, bf16=False, use_cpu=True)


def lora_config():
    from peft import LoraConfig

    from trainer.common import VISION_MODULES

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(LORA_TARGETS),
                      exclude_modules=r".*(" + "|".join(VISION_MODULES) + r").*", task_type="CAUSAL_LM")


def _pil(sample):
    from PIL import Image

    with Image.open(io.BytesIO(sample.image)) as img:
        return img.convert("RGB")


def _user_turn(sample) -> list[dict]:
    from engine.core.prompts import prompt_text

    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text(sample, hint=False)}]}]


# ---------------------------------------------------------------- SFT
def ours_sft(args, model: str, faces: Path) -> list[float]:
    from engine.core.config import DataSource, LoraSection, ModelConfig, SFTSection
    from trainer.sft import run_sft

    s = settings(args)
    cfg = SFTSection(data=(DataSource(uri=str(faces / "samples.jsonl")),), model=ModelConfig(path=model),
                     out=str(common.fresh_dir("sft-ours")), lora=LoraSection(r=16, alpha=32, dropout=0.05),
                     learning_rate=s["learning_rate"], lr_scheduler_type="constant", max_steps=args.steps,
                     per_device_train_batch_size=args.batch_size, logging_steps=1, report_to=("none",),
                     save_steps=10_000, seed=42, precision="fp32")
    with StepTimes() as timer:
        run_sft(cfg)
    return list(timer.times)


def plain_sft(args, model: str, samples) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    rows = [{"images": [_pil(s)], "prompt": _user_turn(s),
             "completion": [{"role": "assistant", "content": [{"type": "text", "text": s.description}]}]}
            for s in samples]
    processor = AutoProcessor.from_pretrained(model)
    llm = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    cfg = SFTConfig(output_dir=str(common.fresh_dir("sft-plain")), max_length=None, completion_only_loss=True,
                    **settings(args))
    with StepTimes() as timer:  # the callback list is read when the trainer is built
        trainer = SFTTrainer(model=llm, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=processor,
                             peft_config=lora_config())
        trainer.train()
    return list(timer.times)


# ---------------------------------------------------------------- GRPO
def grpo_settings(args) -> dict[str, Any]:
    return dict(num_generations=args.num_generations, max_completion_length=args.completion_tokens, beta=0.04,
                epsilon=0.2, temperature=1.0, top_p=1.0, num_iterations=1, loss_type="grpo", scale_rewards="group")


def ours_grpo(args, model: str, faces: Path) -> list[float]:
    from engine.core.config import DataSource, GRPOSection, LoraSection, ModelConfig
    from trainer.grpo import run_grpo

    g = grpo_settings(args)
    cfg = GRPOSection(data=(DataSource(uri=str(faces / "samples.jsonl")),), model=ModelConfig(path=model),
                      out=str(common.fresh_dir("grpo-ours")), lora=LoraSection(r=16, alpha=32, dropout=0.05),
                      learning_rate=1e-4, max_steps=args.steps, per_device_train_batch_size=args.num_generations,
                      logging_steps=1, report_to=("none",), save_steps=10_000, seed=42, precision="fp32",
                      num_generations=g["num_generations"], max_completion_length=g["max_completion_length"],
                      beta=g["beta"], epsilon=g["epsilon"], temperature=g["temperature"])
    with StepTimes() as timer:
        run_grpo(cfg)
    return list(timer.times)


def plain_grpo(args, model: str, samples) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from engine.core.config import VerifierConfig
    from engine.backends.tokens import blocked_token_ids
    from trainer.rewards import VerifierRewards

    rows = [{"prompt": _user_turn(s), "image": _pil(s), "gold_aus": list(s.aus), "gold_labels": list(s.labels),
             "dataset": s.dataset, "sample_id": s.id} for s in samples]
    processor = AutoProcessor.from_pretrained(model, padding_side="left")
    llm = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    rewards = VerifierRewards(VerifierConfig(), None)  # the same reward functions, nothing recorded
    s = settings(args) | {"per_device_train_batch_size": args.num_generations}
    cfg = GRPOConfig(output_dir=str(common.fresh_dir("grpo-plain")), reward_weights=rewards.reward_weights(),
                     generation_kwargs={"bad_words_ids": [[t] for t in blocked_token_ids(processor, llm.config)]},
                     use_vllm=False, **grpo_settings(args), **s)
    with StepTimes() as timer:
        trainer = GRPOTrainer(model=llm, reward_funcs=rewards.functions(), args=cfg,
                              train_dataset=Dataset.from_list(rows), processing_class=processor,
                              peft_config=lora_config())
        trainer.train()
    return list(timer.times)


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="sft,grpo")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2, help="SFT rows per step")
    parser.add_argument("--num-generations", type=int, default=4, help="GRPO group size = completions per step")
    parser.add_argument("--completion-tokens", type=int, default=32, help="GRPO max_completion_length")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    info = common.machine()
    model = common.tiny_model_dir()
    faces = common.face_set(args.samples)
    samples = common.load_samples(faces)
    sides = {"sft": (ours_sft, plain_sft), "grpo": (ours_grpo, plain_grpo)}
    rows, ratios = [], []
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        ours_fn, plain_fn = sides[stage]
        medians: dict[str, list[float]] = {"fea train": [], "plain TRL": []}
        for round_ in range(args.rounds):
            for side, run in (("fea train", lambda: ours_fn(args, model, faces)),
                              ("plain TRL", lambda: plain_fn(args, model, samples))):
                times = run()
                step = steady(times, args.warmup_steps)
                medians[side].append(step)
                rows.append({"stage": stage, "side": side, "round": round_, "steps": len(times),
                             "first_step_s": times[0] if times else float("nan"), "steady_step_s": step,
                             "mean_step_s": sum(times[args.warmup_steps:]) / max(len(times) - args.warmup_steps, 1)})
                common.print_table(f"{stage} {side} round {round_}", rows[-1:])
        ours, plain = common.median(medians["fea train"]), common.median(medians["plain TRL"])
        ratios.append(common.ratio_row(f"{stage}: step time, fea train vs plain TRL", ours, plain,
                                       f"<= {TARGET}", ours / plain <= TARGET))
    common.print_table("training step time", rows)
    common.print_table("ratios", ratios)
    notes = [f"Tiny model, fp32, CPU, torch threads {args.threads} on both sides; LoRA r16/alpha32/dropout 0.05 on "
             f"{', '.join(LORA_TARGETS)} (vision tower excluded); lr 1e-4 constant; {args.steps} steps per run, "
             f"first {args.warmup_steps} dropped, median of the rest; median over {args.rounds} alternating rounds.",
             f"SFT: batch {args.batch_size}, completion-only loss, rows = evaluation prompt (no hint) + image + "
             f"reference reasoning of {args.samples} synthetic faces; ours streams them from the FEA-20K JSONL "
             "(datasets.IterableDataset), plain TRL gets the same rows as an in-memory Dataset.",
             f"GRPO: group size {args.num_generations} = completions per step, max_completion_length "
             f"{args.completion_tokens}, beta 0.04, temperature 1.0, the verifier reward functions "
             "(trainer.rewards.VerifierRewards) on both sides; ours also records every reward to rewards.jsonl."]
    if not args.no_record:
        common.record_run("training step time (item 7)", common.command_line(), info, rows, ratios, notes)


if __name__ == "__main__":
    main()
