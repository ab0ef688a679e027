"""Supervised fine-tuning on reference reasoning (TRL SFTTrainer, PEFT LoRA by default).

The model learns each sample's `description` (<think>...</think><answer>...</answer>) given the
image and the evaluation prompt (no label hint), with the loss on the completion only.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from engine.core.config import SFTSection
from trainer import common, follow
from trainer.data import PromptFormat, build_dataset, count_rows

log = logging.getLogger(__name__)


def run_sft(cfg: SFTSection, *, resume: bool = False) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    started = time.time()
    out = Path(cfg.out)
    resumed_from = common.resume_point(out, resume)

    # Model, processor, and what gets trained.
    model_dir = common.local_model_dir(cfg.model.path)
    processor = common.load_processor(model_dir)
    model = common.load_model(model_dir, cfg.precision)
    peft_config = common.trainable_setup(model, cfg)

    # Data: streamed rows of (image, prompt, reference completion), sources mixed by weight; or one
    # followed synthesis job, read as its partitions are committed.
    fmt = PromptFormat(cfg.prompt_style, cfg.hint_fraction)
    rows_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * common.world_size()
    followed = None
    if follow.follows(cfg):
        followed, stats = follow.followed_run(cfg, "sft", fmt, rows_per_step, resumed_from)
        train_data = followed.dataset()
        max_steps = cfg.max_steps if cfg.max_steps > 0 else follow.UNBOUNDED_STEPS
    else:
        train_data, stats = build_dataset(cfg.data, "sft", seed=cfg.seed, stopping=cfg.mix_stopping,
                                          shuffle_buffer=cfg.shuffle_buffer, fmt=fmt)
        max_steps = common.resolve_max_steps(cfg, rows_per_step, lambda: count_rows(cfg.data, "sft"))
    eval_data = build_dataset(cfg.eval_data, "sft", seed=cfg.seed, fmt=fmt)[0] if cfg.eval_data else None

    # TRL trainer.
    args = SFTConfig(**common.training_arguments(cfg, out, max_steps, eval_data is not None),
                     max_length=cfg.max_length, completion_only_loss=cfg.completion_only_loss,
                     ignore_data_skip=followed is not None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                         processing_class=processor, peft_config=peft_config,
                         callbacks=[followed.callback(out)] if followed else None)

    # Train (from the last checkpoint when resuming), then save adapter + merged model.
    result = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    return common.finish(trainer, processor, cfg, stage="sft", model_dir=model_dir, out=out, train_result=result,
                         resumed_from=resumed_from, started=started,
                         data_stats=follow.data_report(followed, stats, trainer.state.global_step))
