"""The Facial-R1 self-improvement loop, top to bottom.

    round 0:  seed SFT (base model, seed set)
    each round:  GRPO -> synthesis over the pool samples with no accepted reasoning yet
                 -> retraining (seed + every accepted sample so far) -> held-out evaluation
    until `rounds`, or until the held-out score stops improving for `patience` rounds.

Every step leaves OUT/round-NN/<step>/step.json, written once when the step is done; `--resume`
skips finished steps and reruns the first unfinished one, which resumes on its own (synthesis from
its commits, training from its last checkpoint). One Ray cluster serves every round. Training and
evaluation run in this process or as Ray work with their own GPUs (`placement`, engine/loop/placement.py);
the generator actors are released before them whenever they hold what those steps need, and
otherwise load each round's model with `reload` instead of being restarted. With `overlap`, a round's
retraining starts once its synthesis has committed a first partition and follows the job
(engine/loop/overlap.py).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.loop import placement
from engine.loop.console import stage
from engine.core.config import GRPOSection, LoopConfig, ModelConfig, SFTSection, dump_config
from engine.data import storage
from engine.loop.report import StageEval, build_summary, write_run_report

log = logging.getLogger(__name__)

STEP_FILE = "step.json"
CONTROL = "control"


class LoopStateError(RuntimeError):
    """The run folder does not fit the request (e.g. a finished run without --resume)."""


@dataclass
class RoundState:
    """What one round produced, read back from its step records."""

    index: int
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: list[StageEval] = field(default_factory=list)  # the models evaluated in this round, in order

    def model(self) -> str | None:
        for step in ("retrain", "grpo", "sft_seed"):
            if step in self.steps:
                return self.steps[step]["model"]
        return None


class Run:
    """One loop run: paths, step records and the model lineage."""

    def __init__(self, cfg: LoopConfig, resume: bool) -> None:
        from engine.synth.pool import GeneratorFleet

        self.cfg = cfg
        self.resume = resume
        self.fleet = GeneratorFleet()  # generator actors live across rounds and reload each round's model
        self.work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="fea-loop-")) if storage.is_s3(cfg.out) \
            else Path(cfg.out)

    def round_uri(self, index: int, *parts: str) -> str:
        return storage.join(self.cfg.out, f"round-{index:02d}", *parts)

    def folder_uri(self, index: int | None, *parts: str) -> str:
        """round-NN/... for a round's steps, control/... for the control arm's (index None)."""
        return self.round_uri(index, *parts) if index is not None else storage.join(self.cfg.out, CONTROL, *parts)

    def record(self, index: int | None, step: str) -> dict[str, Any] | None:
        uri = self.folder_uri(index, step, STEP_FILE)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    def step(self, index: int | None, name: str, body: Callable[[], dict[str, Any]],
             show: bool = True) -> dict[str, Any]:
        """Run `body` unless its record exists; the record is written once, after the step's outputs.
        `show`: a console stage line (one thread at a time; a step beside another runs without)."""
        where = f"round {index}" if index is not None else CONTROL
        done = self.record(index, name)
        if done is not None:
            log.info("%s: %s already done", where, name)
            return done
        log.info("%s: %s", where, name)
        started = time.monotonic()
        with stage(f"{where}: {name}") if show else contextlib.nullcontext():
            outputs = body()
        outputs.update(step=name, round=index, seconds=round(time.monotonic() - started, 3))
        if not storage.write_once(self.folder_uri(index, name, STEP_FILE), json.dumps(outputs, sort_keys=True).encode()):
            raise LoopStateError(f"{where} step {name} was finished by another process at the same time")
        return outputs


# ---------------------------------------------------------------- the steps
def _local_dir(run: Run, index: int | None, step: str) -> tuple[str, Path]:
    """The step's folder in the run, and where it is written locally (the same unless the run is on S3)."""
    uri = run.folder_uri(index, step)
    folder = f"round-{index:02d}" if index is not None else CONTROL
    return uri, Path(uri) if not storage.is_s3(uri) else run.work / folder / step


def _train(run: Run, index: int | None, step: str, section: SFTSection | GRPOSection, data: list[str | dict],
           model: str, max_steps: int | None = None) -> dict[str, Any]:
    """`data`: URIs (weight 1), or DataSource fields (e.g. a followed synthesis output)."""
    uri, local = _local_dir(run, index, step)
    sources = [u if isinstance(u, dict) else {"uri": u, "weight": 1.0} for u in data]
    cfg = section.model_validate({**section.model_dump(), "data": sources,
                                  "model": {"path": model}, "out": str(local), "round": index or 0,
                                  **({"max_steps": max_steps} if max_steps else {})})
    local.mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.join(uri, "config.yaml"), dump_config(cfg))  # the step's resolved config
    placement.make_room(run.cfg, run.fleet)
    return placement.train(run.cfg, cfg, local, uri)


def _accepted_ids(run: Run, before: int) -> set[str]:
    """Ids accepted by the synthesis of earlier rounds (committed shards only; the id column alone)."""
    from engine.data.commits import committed_shard_uris
    from engine.data.shards import iter_parquet_rows

    ids: set[str] = set()
    for index in range(before):
        record = run.record(index, "synth")
        if record is not None:
            for uri in committed_shard_uris(record["out"], "accepted", "parquet"):
                ids.update(row["id"] for row in iter_parquet_rows(uri, columns=["id"]))
    return ids


def _synth(run: Run, index: int, model: str) -> dict[str, Any]:
    from engine.data.dataset import iter_samples, write_samples
    from engine.synth.job import run_synth

    have = _accepted_ids(run, index)
    input_uri = run.round_uri(index, "synth", "input")
    if not storage.exists(storage.join(input_uri, "summary.json")):  # a rerun keeps the first cut of the pool
        pool = iter_samples(run.cfg.pool, image_root=run.cfg.image_root)
        if run.cfg.pool_per_round:  # round r reaches the first (r + 1) slices of the pool
            pool = itertools.islice(pool, (index + 1) * run.cfg.pool_per_round)
        todo = (s for s in pool if s.id not in have)
        write_samples(todo, input_uri)
    out = run.round_uri(index, "synth", "out")
    cfg = run.cfg.synth.model_validate({**run.cfg.synth.model_dump(), "input": input_uri, "image_root": None,
                                        "out": out, "model": _round_model(run.cfg.synth.model, model),
                                        "job_id": f"round-{index:02d}"})
    summary = run_synth(cfg, fleet=run.fleet)
    return {"model": model, "out": out, "summary": summary, "pool_already_accepted": len(have)}


def _round_model(section: ModelConfig, model: str) -> dict[str, Any]:
    """The round's model (a merged folder, no adapter) with the section's other settings, e.g. dtype."""
    return {**section.model_dump(), "path": model, "adapter": None}


def _eval(run: Run, index: int | None, model: str, step: str = "eval") -> dict[str, Any]:
    uri, local = _local_dir(run, index, step)
    cfg = run.cfg.eval.model_validate({**run.cfg.eval.model_dump(), "data": run.cfg.test,
                                       "model": _round_model(run.cfg.eval.model, model), "out": str(local)})
    storage.write_text(storage.join(uri, "config.yaml"), dump_config(cfg))
    placement.make_room(run.cfg, run.fleet)
    return {"model": model, **placement.evaluate(run.cfg, cfg, local, uri)}


def held_out_score(metrics: dict[str, Any], name: str) -> float:
    """A missing metric (e.g. no answer parsed at all) counts as 0, never as a skipped round."""
    overall = metrics["overall"]
    if name == "rege":
        return float(overall["emotion_accuracy"] or 0.0) + float(overall["rouge_l_f"] or 0.0)
    return float(overall[name] or 0.0)


# ---------------------------------------------------------------- the run
def _evaluated(run: Run, state: RoundState, step: str, name: str, model: str) -> None:
    """Evaluate `model` on the held-out set as the round's step `step` (once; a rerun reads the record)."""
    record = state.steps[step] = run.step(state.index, step, lambda: _eval(run, state.index, model, step))
    state.stages.append(StageEval(name=name, round=state.index if name.startswith(("grpo", "retrain")) else None,
                                  eval_dir=record["eval_dir"], model=model))


def run_round(run: Run, index: int, model: str) -> RoundState:
    cfg = run.cfg
    state = RoundState(index)
    if index == 0:
        if cfg.evaluate_stages:
            _evaluated(run, state, "eval_base", "base", cfg.base_model.path)
        state.steps["sft_seed"] = run.step(index, "sft_seed", lambda: _train(
            run, index, "sft_seed", cfg.sft, list(cfg.seed_data), cfg.base_model.path))
        model = state.steps["sft_seed"]["model"]
        if cfg.evaluate_stages:
            _evaluated(run, state, "eval_sft_seed", "sft_seed", model)
    state.steps["grpo"] = run.step(index, "grpo", lambda: _train(run, index, "grpo", cfg.grpo, [cfg.pool], model))
    model = state.steps["grpo"]["model"]
    if cfg.evaluate_stages:
        _evaluated(run, state, "eval_grpo", f"grpo-{index:02d}", model)
    start = cfg.base_model.path if cfg.retrain_from == "base" else model
    if cfg.overlap and run.record(index, "retrain") is None:
        state.steps["synth"], state.steps["retrain"] = _synth_beside_retrain(run, index, model, start)
    else:
        state.steps["synth"] = run.step(index, "synth", lambda: _synth(run, index, model))
        state.steps["retrain"] = run.step(index, "retrain", lambda: _train(
            run, index, "retrain", cfg.retrain or cfg.sft, _accepted_sources(run, index + 1), start))
    _evaluated(run, state, "eval", f"retrain-{index:02d}", state.steps["retrain"]["model"])
    return state


def _accepted_sources(run: Run, rounds: int) -> list[str]:
    """The seed data and the synthesis outputs of the first `rounds` rounds that accepted anything
    (a round that accepted nothing has no shards to learn from, and an empty source is an error)."""
    outs = [record["out"] for record in (run.record(i, "synth") for i in range(rounds))
            if record["summary"]["accepted"] > 0]
    return list(run.cfg.seed_data) + outs


def _synth_beside_retrain(run: Run, index: int, model: str, start: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`loop.overlap`: the retraining follows the round's synthesis while it runs (engine/loop/overlap.py)."""
    from engine.loop import overlap

    section = run.cfg.retrain or run.cfg.sft
    with stage(f"round {index}: synth + retrain"):
        return overlap.synth_and_retrain(
            run.round_uri(index, "synth", "out"),
            lambda: run.step(index, "synth", lambda: _synth(run, index, model), show=False),
            lambda data, beside: run.step(index, "retrain", lambda: {
                **_train(run, index, "retrain", section, data, start), "overlap": beside}, show=False),
            fixed=_accepted_sources(run, index))


def final_model_steps(rounds: list[RoundState], retrain_from: str) -> int:
    """Optimizer steps that went into the last round's model: the whole chain (seed SFT, every GRPO
    and retraining) when retraining continues, the last retraining alone when it starts from the base."""
    if retrain_from == "base":
        return int(rounds[-1].steps["retrain"]["train"]["global_step"])
    return sum(int(record["train"]["global_step"]) for state in rounds
               for name, record in state.steps.items() if name in ("sft_seed", "grpo", "retrain"))


def run_control(run: Run, rounds: list[RoundState]) -> tuple[StageEval, dict[str, float]]:
    """The ablation: the base model trained on the seed set alone (the seed SFT's settings), for as
    many optimizer steps as the loop's final model had, evaluated the same way. Returns its
    evaluation and the seconds of its two steps."""
    cfg = run.cfg
    steps = final_model_steps(rounds, cfg.retrain_from)
    trained = run.step(None, "sft", lambda: _train(run, None, "sft", cfg.sft, list(cfg.seed_data),
                                                   cfg.base_model.path, max_steps=steps))
    evaluated = run.step(None, "eval", lambda: _eval(run, None, trained["model"]))
    control = StageEval(name=CONTROL, round=None, eval_dir=evaluated["eval_dir"], model=trained["model"])
    return control, {"control sft": trained["seconds"], "control eval": evaluated["seconds"]}


def _synthesis_rows(rounds: list[RoundState]) -> list[dict[str, Any]]:
    return [{"round": s.index, **{k: s.steps["synth"]["summary"][k] for k in ("inputs", "accepted", "rejected",
                                                                             "quarantined")}} for s in rounds]


def _seconds_per_stage(rounds: list[RoundState]) -> dict[str, float]:
    """Seconds per kind of step over all rounds; every held-out evaluation counts as "eval"."""
    seconds: dict[str, float] = {}
    for state in rounds:
        for name, record in state.steps.items():
            kind = "eval" if name.startswith("eval") else name
            seconds[kind] = seconds.get(kind, 0.0) + float(record["seconds"])
    return seconds


def _check_fresh_or_resume(run: Run) -> None:
    existing = run.record(0, "sft_seed") or run.record(0, "eval_base")
    if existing is not None and not run.resume:
        raise LoopStateError(f"{storage.redact(run.cfg.out)} already holds a run: pass --resume to continue it "
                             "or choose another out")


def _run_rounds(run: Run, perception: dict[str, Any] | None) -> tuple[list[RoundState], float, str]:
    """Rounds until `rounds` or early stopping; returns them, the best held-out score and why it stopped."""
    cfg = run.cfg
    rounds: list[RoundState] = []
    best, stale, stop_reason = float("-inf"), 0, f"reached {cfg.rounds} rounds"
    model = cfg.base_model.path
    for index in range(cfg.rounds):
        state = run_round(run, index, model)
        rounds.append(state)
        model = state.model() or model
        score = held_out_score(state.steps["eval"]["metrics"], cfg.score)
        write_run_report(cfg, rounds, perception=perception)
        if score > best + cfg.min_improvement:
            best, stale = score, 0
        else:
            stale += 1
        if stale >= cfg.patience and index + 1 < cfg.rounds:
            stop_reason = f"held-out {cfg.score} did not improve for {stale} round(s)"
            break
    return rounds, best, stop_reason


def run_loop(cfg: LoopConfig, resume: bool = False, perception: dict[str, Any] | None = None) -> dict[str, Any]:
    from engine.cluster.connect import ensure_ray

    started = time.monotonic()
    run = Run(cfg, resume)
    _check_fresh_or_resume(run)
    storage.write_text(storage.join(cfg.out, "loop-config.yaml"), dump_config(cfg))
    with stage("Ray"):
        started_ray = ensure_ray()
    try:
        rounds, best, stop_reason = _run_rounds(run, perception)
        stages = [evaluated for state in rounds for evaluated in state.stages]
        seconds = _seconds_per_stage(rounds)
        if cfg.control:  # inside Ray's lifetime: its steps may be Ray work too
            run.fleet.release()  # synthesis is over
            control, control_seconds = run_control(run, rounds)
            stages.append(control)
            seconds.update(control_seconds)
    finally:
        run.fleet.release()
        if started_ray:
            import ray

            ray.shutdown()
    synthesis = _synthesis_rows(rounds)
    report = write_run_report(cfg, rounds, stop_reason=stop_reason, stages=stages, synthesis_rows=synthesis,
                              perception=perception, seconds_per_stage=seconds)
    existing = {"out": storage.redact(cfg.out), "rounds": len(rounds), "stop_reason": stop_reason,
                "best_score": best, "score": cfg.score, "final_model": rounds[-1].model() if rounds else None,
                "report": report, "seconds_per_stage": seconds, "perception": perception}
    test_n = rounds[-1].steps["eval"]["metrics"]["n"] if rounds else 0
    summary = build_summary(stages, synthesis, test_n=test_n,
                            wall_seconds=time.monotonic() - started, existing=existing)
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    return summary
