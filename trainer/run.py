"""`fea train sft|grpo`: config file + flags -> one training run -> summary dict."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from engine.data import storage
from engine.core.config import GRPOSection, SFTSection, dump_config, load_config

log = logging.getLogger(__name__)

SECTIONS = {"sft": SFTSection, "grpo": GRPOSection}


def training_config(stage: str, *, data: Sequence[str] | None = None, weights: Sequence[float] | None = None,
                    model: str | None = None, out: str | None = None, config_path: str | None = None,
                    max_steps: int | None = None, shard_format: str | None = None, follow: bool = False,
                    follow_timeout: float | None = None,
                    overrides: dict[str, Any] | None = None) -> SFTSection | GRPOSection:
    """The stage's section of `config_path` (paper defaults without one), then `overrides` (dotted keys, as
    the command line's config flags give them), then the named arguments.
    --data replaces the file's sources; --weights gives their mixing weights (default equal);
    --format, --follow and --follow-timeout apply to every source."""
    if stage not in SECTIONS:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {sorted(SECTIONS)}")
    named = {"model.path": model, "out": out, "max_steps": max_steps}
    overrides = {**(overrides or {}), **{key: value for key, value in named.items() if value is not None}}
    if data:
        if weights is not None and len(weights) != len(data):
            raise ValueError(f"{len(weights)} weights for {len(data)} data sources")
        overrides["data"] = [{"uri": uri, "weight": w} for uri, w in zip(data, weights or [1.0] * len(data))]
    elif weights is not None:
        raise ValueError("--weights needs --data")
    section = stage if config_path else None
    cfg = load_config(SECTIONS[stage], config_path, overrides, section=section)
    per_source = {"format": shard_format, "follow": follow or None, "follow_timeout": follow_timeout}
    if follow_timeout is not None and not (follow or any(source.follow for source in cfg.data)):
        raise ValueError("--follow-timeout needs --follow")
    if any(v is not None for v in per_source.values()):
        overrides["data"] = [{**source.model_dump(), **{k: v for k, v in per_source.items() if v is not None}}
                             for source in cfg.data]
        cfg = load_config(SECTIONS[stage], config_path, overrides, section=section)
    if any(source.follow for source in cfg.data) and cfg.max_steps <= 0 and cfg.warmup_ratio > 0:
        raise ValueError("a followed run without --max-steps has no step horizon to warm up over: give "
                         "--max-steps or set warmup_ratio to 0")
    return cfg


def train(stage: str, cfg: SFTSection | GRPOSection, resume: bool = False) -> dict[str, Any]:
    """One SFT or GRPO run with a resolved config; its summary."""
    if not cfg.out:
        raise ValueError("no output folder (--out or out in the config)")
    if storage.is_s3(cfg.out):
        raise ValueError("training writes checkpoints to a local folder: give a local --out (copy it to S3 after)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stage}-config.yaml").write_text(dump_config(cfg))
    if stage == "sft":
        from trainer.sft import run_sft

        return run_sft(cfg, resume=resume)
    from trainer.grpo import run_grpo

    return run_grpo(cfg, resume=resume)
