"""The Facial-R1 self-improvement loop, top to bottom.

    round 0:  seed SFT (base model, seed set)
    each round:  GRPO -> synthesis over the pool samples with no accepted reasoning yet
                 -> retraining (seed + every accepted sample so far) -> held-out evaluation
    until `rounds`, or until the held-out score stops improving for `patience` rounds.

Every step leaves OUT/round-NN/<step>/step.json, written once when the step is done; `--resume`
skips finished steps and reruns the first unfinished one, which resumes on its own (synthesis from
its commits, training from its last checkpoint). One Ray cluster serves every round: the generator
actors load each round's model with `reload` instead of being restarted.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.data import storage
from engine.core.config import GRPOSection, LoopConfig, ModelConfig, SFTSection, dump_config, load_config

log = logging.getLogger(__name__)

STEP_FILE = "step.json"


class LoopStateError(RuntimeError):
    """The run folder does not fit the request (e.g. a finished run without --resume)."""


@dataclass
class RoundState:
    """What one round produced, read back from its step records."""

    index: int
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model(self) -> str | None:
        for step in ("retrain", "grpo", "sft_seed"):
            if step in self.steps:
                return self.steps[step]["model"]
        return None


class Run:
    """One loop run: paths, step records and the model lineage."""

    def __init__(self, cfg: LoopConfig, resume: bool) -> None:
        from engine.synth.job import GeneratorFleet

        self.cfg = cfg
        self.resume = resume
        self.fleet = GeneratorFleet()  # generator actors live across rounds and reload each round's model
        self.work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="fea-loop-")) if storage.is_s3(cfg.out) \
            else Path(cfg.out)

    def round_uri(self, index: int, *parts: str) -> str:
        return storage.join(self.cfg.out, f"round-{index:02d}", *parts)

    def record(self, index: int, step: str) -> dict[str, Any] | None:
        uri = self.round_uri(index, step, STEP_FILE)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    def step(self, index: int, name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `body` unless its record exists; the record is written once, after the step's outputs."""
        done = self.record(index, name)
        if done is not None:
            log.info("round %d: %s already done", index, name)
            return done
        log.info("round %d: %s", index, name)
        started = time.monotonic()
        outputs = body()
        outputs.update(step=name, round=index, seconds=round(time.monotonic() - started, 3))
        if not storage.write_once(self.round_uri(index, name, STEP_FILE), json.dumps(outputs, sort_keys=True).encode()):
            raise LoopStateError(f"round {index} step {name} was finished by another process at the same time")
        return outputs


# ---------------------------------------------------------------- the steps
def _publish_model(local_out: Path, uri: str) -> str:
    """The merged model's location in the run folder (uploaded when the run folder is on S3)."""
    merged = local_out / "merged"
    if not storage.is_s3(uri):
        return str(merged)
    storage.upload_dir(merged, storage.join(uri, "merged"))
    return storage.join(uri, "merged")


def _local_dir(run: Run, index: int, step: str) -> tuple[str, Path]:
    """The step's folder in the run, and where it is written locally (the same unless the run is on S3)."""
    uri = run.round_uri(index, step)
    return uri, Path(uri) if not storage.is_s3(uri) else run.work / f"round-{index:02d}" / step


def _train(run: Run, index: int, step: str, section: SFTSection | GRPOSection, data: list[str],
           model: str) -> dict[str, Any]:
    from trainer.grpo import run_grpo
    from trainer.sft import run_sft

    uri, local = _local_dir(run, index, step)
    cfg = section.model_validate({**section.model_dump(), "data": [{"uri": u, "weight": 1.0} for u in data],
                                  "model": {"path": model}, "out": str(local), "round": index})
    local.mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.join(uri, "config.yaml"), dump_config(cfg))  # the step's resolved config
    train = run_grpo if isinstance(section, GRPOSection) else run_sft
    summary = train(cfg, resume=True)  # resume: a step killed mid-training continues from its checkpoint
    return {"model": _publish_model(local, uri), "train": summary}


def _accepted_ids(run: Run, before: int) -> set[str]:
    """Ids accepted by the synthesis of earlier rounds (committed shards only; the id column alone)."""
    from engine.data.shards import committed_shard_uris, iter_parquet_rows

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
        todo = (s for s in iter_samples(run.cfg.pool, image_root=run.cfg.image_root) if s.id not in have)
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


def _eval(run: Run, index: int, model: str) -> dict[str, Any]:
    from trainer.eval import run_eval

    uri, local = _local_dir(run, index, "eval")
    cfg = run.cfg.eval.model_validate({**run.cfg.eval.model_dump(), "data": run.cfg.test,
                                       "model": _round_model(run.cfg.eval.model, model), "out": str(local)})
    storage.write_text(storage.join(uri, "config.yaml"), dump_config(cfg))
    metrics = run_eval(cfg)
    if storage.is_s3(uri):
        storage.upload_dir(local, uri)
    return {"model": model, "metrics": metrics}


def held_out_score(metrics: dict[str, Any], name: str) -> float:
    """A missing metric (e.g. no answer parsed at all) counts as 0, never as a skipped round."""
    overall = metrics["overall"]
    if name == "rege":
        return float(overall["emotion_accuracy"] or 0.0) + float(overall["rouge_l_f"] or 0.0)
    return float(overall[name] or 0.0)


# ---------------------------------------------------------------- the run
def run_round(run: Run, index: int, model: str) -> RoundState:
    cfg = run.cfg
    state = RoundState(index)
    if index == 0:
        state.steps["sft_seed"] = run.step(index, "sft_seed", lambda: _train(
            run, index, "sft_seed", cfg.sft, list(cfg.seed_data), cfg.base_model.path))
        model = state.steps["sft_seed"]["model"]
    state.steps["grpo"] = run.step(index, "grpo", lambda: _train(run, index, "grpo", cfg.grpo, [cfg.pool], model))
    model = state.steps["grpo"]["model"]
    state.steps["synth"] = run.step(index, "synth", lambda: _synth(run, index, model))
    # A round that accepted nothing has no shards to learn from (and an empty source is an error).
    accepted_sources = [record["out"] for record in (run.record(i, "synth") for i in range(index + 1))
                        if record["summary"]["accepted"] > 0]
    start = cfg.base_model.path if cfg.retrain_from == "base" else model
    state.steps["retrain"] = run.step(index, "retrain", lambda: _train(
        run, index, "retrain", cfg.retrain or cfg.sft, list(cfg.seed_data) + accepted_sources, start))
    state.steps["eval"] = run.step(index, "eval", lambda: _eval(run, index, state.steps["retrain"]["model"]))
    return state


def _check_fresh_or_resume(run: Run) -> None:
    existing = run.record(0, "sft_seed")
    if existing is not None and not run.resume:
        raise LoopStateError(f"{storage.redact(run.cfg.out)} already holds a run: pass --resume to continue it "
                             "or choose another out")


def run_loop(cfg: LoopConfig, resume: bool = False) -> dict[str, Any]:
    from engine.loop_report import write_run_report
    from engine.raycluster import ensure_ray

    run = Run(cfg, resume)
    _check_fresh_or_resume(run)
    storage.write_text(storage.join(cfg.out, "loop-config.yaml"), dump_config(cfg))
    started_ray = ensure_ray()
    rounds: list[RoundState] = []
    best, stale, stop_reason = float("-inf"), 0, f"reached {cfg.rounds} rounds"
    try:
        model = cfg.base_model.path
        for index in range(cfg.rounds):
            state = run_round(run, index, model)
            rounds.append(state)
            model = state.model() or model
            score = held_out_score(state.steps["eval"]["metrics"], cfg.score)
            write_run_report(cfg, rounds)
            if score > best + cfg.min_improvement:
                best, stale = score, 0
            else:
                stale += 1
            if stale >= cfg.patience and index + 1 < cfg.rounds:
                stop_reason = f"held-out {cfg.score} did not improve for {stale} round(s)"
                break
    finally:
        run.fleet.release()
        if started_ray:
            import ray

            ray.shutdown()
    report = write_run_report(cfg, rounds, stop_reason=stop_reason)
    summary = {"out": storage.redact(cfg.out), "rounds": len(rounds), "stop_reason": stop_reason,
               "best_score": best, "score": cfg.score, "final_model": rounds[-1].model() if rounds else None,
               "report": report}
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    return summary


def run_loop_from_file(config_path: str, resume: bool = False) -> dict[str, Any]:
    return run_loop(load_config(LoopConfig, config_path, section="loop"), resume=resume)


# ---------------------------------------------------------------- the embedded default
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _split_demo_faces(faces_dir: Path, seed_size: int) -> dict[str, str]:
    """samples.jsonl -> seed (reasoning kept), pool (labels only: its reasoning is what we synthesise), test."""
    records = [json.loads(line) for line in (faces_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["meta_info"]["split"] == "train"]
    splits = {"seed": train[:seed_size], "pool": [{**r, "description": ""} for r in train[seed_size:]],
              "test": [r for r in records if r["meta_info"]["split"] == "test"]}
    paths = {}
    for name, rows in splits.items():
        path = faces_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths[name] = str(path)
    return paths


def run_demo(out: str = "demo-out", faces: int = 200, seed_size: int = 64, config_path: str | Path = DEMO_CONFIG,
             overrides: dict[str, Any] | None = None) -> str:
    """Tiny model + synthetic faces + local Ray + the loop on CPU; returns the report's path.

    Rerunning with the same `out` resumes the run where it stopped."""
    from engine.demo.faces import write_face_set
    from engine.demo.tinymodel import build_tiny_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not Path(config_path).exists():
        raise FileNotFoundError(f"{config_path} is missing: run the demo from a checkout (pip install -e .)")
    root = Path(out).resolve()
    resume = (root / "run" / "round-00").exists()
    model = root / "model"
    if not (model / "config.json").exists():
        build_tiny_model(model, seed=0)
    faces_dir = root / "faces"
    if not (faces_dir / "samples.jsonl").exists():
        write_face_set(faces_dir, n=faces, seed=0)
    splits = _split_demo_faces(faces_dir, seed_size)
    cfg = load_config(LoopConfig, config_path, section="loop", overrides={
        "out": str(root / "run"), "base_model.path": str(model), "seed_data": [splits["seed"]],
        "pool": splits["pool"], "test": splits["test"], **(overrides or {})})
    return run_loop(cfg, resume=resume)["report"]
