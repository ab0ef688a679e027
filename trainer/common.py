"""What SFT and GRPO share: model loading, what to train (LoRA or full, vision frozen or not),
TrainingArguments from a config section, checkpoints and resume, and the final save.

The final save writes OUT/adapter/ (PEFT, when LoRA is on) and OUT/merged/ (base + adapter merged,
with the processor): a plain folder that transformers and vLLM load directly. The merge reloads the
base model and the saved adapter on the main process instead of merging the trained module in place,
so it works the same after DDP, ZeRO-2 and ZeRO-3 (where the live weights are sharded).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from engine.data import storage
from engine.core.config import TrainSection
from engine.core.types import CheckpointRef

log = logging.getLogger(__name__)

# Module names of vision towers and projectors in transformers' VLMs (Qwen2/2.5-VL: "visual").
VISION_MODULES = ("visual", "vision_tower", "vision_model", "multi_modal_projector")
_VISION_RE = re.compile(r"(^|\.)(" + "|".join(VISION_MODULES) + r")(\.|$)")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainingError(RuntimeError):
    """A run that cannot start as asked (e.g. an output folder holding another run)."""


# ---------------------------------------------------------------- model
def local_model_dir(path: str) -> str:
    if not path:
        raise TrainingError("no model given (--model or model.path)")
    return storage.materialize(path)  # s3:// folders are copied once to a node-local cache


def torch_dtype(precision: str):
    import torch

    if precision == "bf16" or (precision == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def load_processor(model_dir: str, padding_side: str | None = None):
    from transformers import AutoProcessor

    kwargs = {"padding_side": padding_side} if padding_side else {}
    return AutoProcessor.from_pretrained(model_dir, **kwargs)


def load_model(model_dir: str, precision: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch_dtype(precision))


def is_vision_parameter(name: str) -> bool:
    return _VISION_RE.search(name) is not None


def trainable_setup(model, cfg: TrainSection):
    """-> the PEFT LoraConfig for TRL (None for full fine-tuning). Full fine-tuning with
    freeze_vision switches the vision parameters' gradients off here; with LoRA the vision
    tower gets no adapters (PEFT freezes every base weight anyway; without freeze_vision, vision
    modules whose names are in lora.target_modules get adapters too)."""
    if cfg.lora.enabled:
        from peft import LoraConfig

        exclude = r"(.*\.)?(" + "|".join(VISION_MODULES) + r")(\..*)?" if cfg.freeze_vision else None
        return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), exclude_modules=exclude,
                          modules_to_save=list(cfg.lora.modules_to_save) or None,
                          task_type="CAUSAL_LM")
    if cfg.freeze_vision:
        frozen = 0
        for name, param in model.named_parameters():
            if is_vision_parameter(name):
                param.requires_grad_(False)
                frozen += param.numel()
        if not frozen:
            raise TrainingError(f"freeze_vision is on but no parameter belongs to {VISION_MODULES}")
        log.info("froze %d vision parameters", frozen)
    return None


# ---------------------------------------------------------------- arguments
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_max_steps(cfg: TrainSection, rows_per_step: float, count_rows) -> int:
    """cfg.max_steps, or (when <= 0) the steps for cfg.num_train_epochs over a counted pass."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    rows = count_rows()
    if rows == 0:
        raise TrainingError("the training data has no usable rows")
    steps = max(1, math.ceil(rows * cfg.num_train_epochs / rows_per_step))
    log.info("%d rows x %s epochs -> %d steps", rows, cfg.num_train_epochs, steps)
    return steps


def training_arguments(cfg: TrainSection, out: Path, max_steps: int, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and GRPOConfig (both are TrainingArguments)."""
    import torch

    bf16 = torch_dtype(cfg.precision) is torch.bfloat16
    return dict(
        output_dir=str(out),  # checkpoint-N/ and runs/ (TensorBoard) land here
        max_steps=max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=cfg.weight_decay,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=bf16,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps if has_eval else None,
        report_to=list(cfg.report_to),
        seed=cfg.seed,
        # One reader: the stream counts what it skips in this process, and TRL's GRPO needs it for
        # streamed prompt groups. Decoding small face images is cheap next to a training step.
        dataloader_num_workers=0,
    )


# ---------------------------------------------------------------- checkpoints
def _checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def _complete(path: Path) -> bool:
    """trainer_state.json is the last file a checkpoint gets; a kill before it leaves a partial folder."""
    try:
        json.loads((path / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint-N in `out`; partial ones after it are removed (with a log line)."""
    if not out.is_dir():
        return None
    found = sorted(((step, p) for p in out.iterdir() if (step := _checkpoint_step(p)) is not None), reverse=True)
    for step, path in found:
        if _complete(path):
            return path
        log.warning("removing incomplete checkpoint %s (interrupted while saving)", path)
        shutil.rmtree(path)
    return None


def resume_point(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to mix a new run into a folder holding another one."""
    last = last_checkpoint(out)
    if last is not None and not resume:
        raise TrainingError(f"{out} already holds checkpoints ({last.name}); pass --resume to continue that run "
                            "or choose another --out")
    if resume and last is None:
        log.info("resume asked but %s has no checkpoint: starting from step 0", out)
    return last if resume else None


def checkpoint_step(path: Path | None) -> int:
    return 0 if path is None else int(_CHECKPOINT_RE.match(path.name).group(1))


# ---------------------------------------------------------------- final save
def save_final(trainer, processor, cfg: TrainSection, model_dir: str, out: Path) -> tuple[Path, Path | None]:
    """OUT/adapter (LoRA) and OUT/merged (loadable by transformers and vLLM). Returns (merged, adapter)."""
    merged_dir, adapter_dir = out / "merged", (out / "adapter" if cfg.lora.enabled else None)
    trainer.save_model(str(adapter_dir or merged_dir))  # every process: ZeRO-3 gathers the weights here
    if trainer.accelerator.is_main_process:
        if adapter_dir is not None:
            _merge_adapter(model_dir, adapter_dir, merged_dir, cfg.precision)
        processor.save_pretrained(merged_dir)
    trainer.accelerator.wait_for_everyone()
    return merged_dir, adapter_dir


def _merge_adapter(model_dir: str, adapter_dir: Path, merged_dir: Path, precision: str) -> None:
    from peft import PeftModel

    base = load_model(model_dir, precision)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)


def finish(trainer, processor, cfg: TrainSection, *, stage: str, model_dir: str, out: Path,
           train_result, resumed_from: Path | None, data_stats: dict[str, Any], started: float,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the model, write OUT/checkpoint.json (CheckpointRef) and OUT/summary.json; return the summary."""
    merged_dir, adapter_dir = save_final(trainer, processor, cfg, model_dir, out)
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    start_step = checkpoint_step(resumed_from)
    metrics = {"train_loss": float(train_result.training_loss), "global_step": float(state.global_step)}
    ref = CheckpointRef(uri=str(merged_dir), base_model=cfg.model.path,
                        adapter_uri=str(adapter_dir) if adapter_dir else None, round=cfg.round, stage=stage,
                        metrics=metrics)
    summary = {
        "stage": stage, "out": str(out), "checkpoint": json.loads(ref.to_json()),
        "global_step": state.global_step, "resumed_from_step": start_step,
        "steps_run": state.global_step - start_step, "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "train_runtime_s": round(time.time() - started, 3),
        "data": data_stats, **(extra or {}),
    }
    if trainer.accelerator.is_main_process:
        (out / "log_history.json").write_text(json.dumps(state.log_history, indent=1) + "\n")
        (out / "checkpoint.json").write_text(ref.to_json() + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
