"""GRPO with verifiable rewards (TRL GRPOTrainer, PEFT LoRA by default).

Each prompt (image + evaluation prompt, no label hint) gets `num_generations` sampled completions;
engine.core.verifier scores them (R_AU, R_acc, R_format, weighted by the verifier config) and TRL turns
the group-relative rewards into the policy update, with a KL term (beta) against the reference
model (the base weights with the adapter switched off, under LoRA).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.backends.tokens import blocked_token_ids
from engine.core.config import GRPOSection
from trainer import common, follow
from trainer.data import PromptFormat, build_dataset, count_rows
from trainer.rewards import RewardRecorder, VerifierRewards

log = logging.getLogger(__name__)


def generation_kwargs(processor, config, use_vllm: bool) -> dict[str, Any]:
    """Forbid the vision special tokens in rollouts: a sampled <|image_pad|> would break the next
    training forward ("image features and image tokens do not match"). A trained model never emits
    them; a random or young one can."""
    blocked = blocked_token_ids(processor, config)
    if not blocked:
        return {}
    if use_vllm:
        return {"logit_bias": {token: -100.0 for token in blocked}}
    return {"bad_words_ids": [[token] for token in blocked]}


def rewards_log_name() -> str:
    rank = int(os.environ.get("RANK", "0"))
    return "rewards.jsonl" if rank == 0 else f"rewards-rank{rank}.jsonl"


def prompts_per_step(cfg: GRPOSection, completions_per_step: int) -> int:
    """Rows of the stream one optimizer step takes: each prompt gets num_generations completions, and a
    generation batch is trained on num_iterations times (TRL's repeat_iterable_dataset)."""
    per_prompt = cfg.num_generations * cfg.num_iterations
    if completions_per_step % per_prompt:
        raise common.TrainingError(f"following a job needs whole prompts per step: {completions_per_step} "
                                   f"completions per step do not divide into num_generations x num_iterations "
                                   f"= {per_prompt}")
    return completions_per_step // per_prompt


def run_grpo(cfg: GRPOSection, *, resume: bool = False) -> dict[str, Any]:
    from trl import GRPOConfig, GRPOTrainer

    started = time.time()
    out = Path(cfg.out)
    resumed_from = common.resume_point(out, resume)

    # Model, processor (left padding for generation), and what gets trained.
    model_dir = common.local_model_dir(cfg.model.path)
    processor = common.load_processor(model_dir, padding_side="left")
    model = common.load_model(model_dir, cfg.precision)
    peft_config = common.trainable_setup(model, cfg)

    # Data: streamed prompts with their gold labels, sources mixed by weight.
    # Shuffled here (TRL's own shuffle is switched off below) so shuffle_buffer means the same in both stages.
    fmt = PromptFormat(cfg.prompt_style)
    completions_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * common.world_size()
    followed = None
    if follow.follows(cfg):  # one followed synthesis job, read as its partitions are committed
        followed, stats = follow.followed_run(cfg, "grpo", fmt, prompts_per_step(cfg, completions_per_step),
                                              resumed_from)
        train_data = followed.dataset()
        max_steps = cfg.max_steps if cfg.max_steps > 0 else follow.UNBOUNDED_STEPS
    else:
        train_data, stats = build_dataset(cfg.data, "grpo", seed=cfg.seed, stopping=cfg.mix_stopping,
                                          shuffle_buffer=cfg.shuffle_buffer, fmt=fmt)
        max_steps = common.resolve_max_steps(cfg, completions_per_step / cfg.num_generations,
                                             lambda: count_rows(cfg.data, "grpo"))
    eval_data = build_dataset(cfg.eval_data, "grpo", seed=cfg.seed, fmt=fmt)[0] if cfg.eval_data else None

    # Rewards: the verifier, once per completion; optionally recorded to OUT/rewards.jsonl (one file
    # per process when distributed). A resumed run redoes the steps after its checkpoint.
    recorder = RewardRecorder(out / rewards_log_name()) if cfg.record_rewards else None
    if recorder is not None and resumed_from is not None:
        recorder.drop_from_step(common.checkpoint_step(resumed_from))
    rewards = VerifierRewards(cfg.verifier, recorder)

    # TRL trainer.
    args = GRPOConfig(
        **common.training_arguments(cfg, out, max_steps, eval_data is not None),
        num_generations=cfg.num_generations, beta=cfg.beta, epsilon=cfg.epsilon, temperature=cfg.temperature,
        top_p=cfg.top_p, max_completion_length=cfg.max_completion_length, num_iterations=cfg.num_iterations,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, reward_weights=rewards.reward_weights(),
        shuffle_dataset=False, log_completions=cfg.log_completions, ignore_data_skip=followed is not None,
        generation_kwargs=generation_kwargs(processor, model.config, cfg.use_vllm), use_vllm=cfg.use_vllm,
        **({"vllm_mode": cfg.vllm_mode, "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization}
           if cfg.use_vllm else {}),
    )
    trainer = GRPOTrainer(model=model, reward_funcs=rewards.functions(), args=args, train_dataset=train_data,
                          eval_dataset=eval_data, processing_class=processor, peft_config=peft_config,
                          callbacks=[followed.callback(out)] if followed else None)

    # Train (from the last checkpoint when resuming), then save adapter + merged model.
    try:
        result = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    finally:
        if recorder is not None:
            recorder.close()
    extra = {"rewards_log": str(recorder.path) if recorder else None}
    return common.finish(trainer, processor, cfg, stage="grpo", model_dir=model_dir, out=out, train_result=result,
                         resumed_from=resumed_from, started=started, extra=extra,
                         data_stats=follow.data_report(followed, stats, trainer.state.global_step))
