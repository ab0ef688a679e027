"""Round wall time with `loop.overlap` against without: one reduced loop round (seed SFT, GRPO,
synthesis, retraining, held-out evaluation) on the tiny model on CPU, run in this process with each
setting in turn (alternating when --repeats > 1), each in a fresh run folder.

--backend replay (default): synthesis replays stored completions (every other pool face accepted,
the rest rejected after every retry), so both settings train on the same accepted rows, and
synthesis costs little. --backend hf: the round's GRPO model generates (the tiny model's reasoning is
almost never accepted, so both retrain on the seed alone), so synthesis costs what generation costs.
The generator and filter actors run on local Ray beside the driver, where the retraining runs.
Reported: the loop's wall time, the seconds of the synthesis and retraining steps, and the span from
the synthesis' start to the retraining's end (the part overlap can shorten; the round's other steps
and Ray's start and stop are the same work in both settings). Imports and one untimed round come first.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
TRAIN = {"lora": LORA, "num_train_epochs": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
         "precision": "fp32", "save_steps": 4, "logging_steps": 1, "report_to": ["none"], "prompt_style": "compact"}


def loop_section(root: Path, model: str, splits: dict[str, str], replay: Path, args) -> dict[str, Any]:
    return {
        "out": str(root / "run"), "rounds": 1, "evaluate_stages": False, "control": False, "placement": "driver",
        "base_model": {"path": model}, "seed_data": [splits["seed"]], "pool": splits["pool"], "test": splits["test"],
        "sft": TRAIN,
        "grpo": {"lora": LORA, "max_steps": 2, "per_device_train_batch_size": 2, "num_generations": 2,
                 "max_completion_length": 8, "precision": "fp32", "save_steps": 2, "report_to": ["none"],
                 "prompt_style": "compact"},
        "synth": {"generators": args.generators, "max_retries": 1, "partition_size": args.partition_size,
                  "progress": "off", "prompt_style": "compact", "generation": generation(args, replay)},
        "eval": {"prompt_style": "compact", "generation": {"backend": "hf", "max_new_tokens": 8, "batch_size": 8}},
    }


def generation(args, replay: Path) -> dict[str, Any]:
    if args.backend == "replay":
        return {"backend": "replay", "batch_size": args.partition_size, "replay_path": str(replay)}
    return {"backend": "hf", "batch_size": args.partition_size, "max_new_tokens": args.max_new_tokens}


def warm_imports() -> None:
    """The libraries every run imports, imported once before any run is timed."""
    import ray  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import engine.loop.rounds  # noqa: F401
    import trainer.sft  # noqa: F401


def replay_store(faces: Path, pool: Path, path: Path) -> Path:
    """Even pool faces replay their reference reasoning (accepted), odd ones a wrong answer (rejected)."""
    references = {r["id"]: r["description"] for r in _jsonl(faces / "samples.jsonl")}
    with path.open("w") as f:
        for position, record in enumerate(_jsonl(pool)):
            good = references[record["id"]] if position % 2 == 0 else "<think>A face.</think><answer>none</answer>"
            for attempt in range(2):
                f.write(json.dumps({"sample_id": record["id"], "attempt": attempt, "completion": good}) + "\n")
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_round(section: dict[str, Any], overlap: bool) -> dict[str, Any]:
    from engine.core.config import LoopConfig
    from engine.loop.rounds import run_loop

    cfg = LoopConfig.model_validate({**section, "overlap": overlap})
    with common.stopwatch() as t:
        run_loop(cfg)
    out = Path(section["out"]) / "round-00"
    synth, retrain = (json.loads((out / step / "step.json").read_text()) for step in ("synth", "retrain"))
    return {"overlap": "yes" if overlap else "no", "round wall s": round(t["wall"], 1),
            "synth s": synth["seconds"], "retrain s": retrain["seconds"],
            "synth start -> retrain end s": _span(out, synth, retrain), "accepted": synth["summary"]["accepted"],
            "retrain steps": retrain["train"]["global_step"]}


def _span(round_dir: Path, synth: dict[str, Any], retrain: dict[str, Any]) -> float:
    """From the synthesis step's start to the retraining step's record (both records' write times)."""
    synth_started = (round_dir / "synth" / "step.json").stat().st_mtime - synth["seconds"]
    return round((round_dir / "retrain" / "step.json").stat().st_mtime - synth_started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=8, help="Seed faces (with reference reasoning).")
    parser.add_argument("--pool", type=int, default=96, help="Pool faces to synthesise reasoning for.")
    parser.add_argument("--test", type=int, default=8, help="Held-out faces.")
    parser.add_argument("--partition-size", dest="partition_size", type=int, default=2)
    parser.add_argument("--generators", type=int, default=1)
    parser.add_argument("--backend", choices=["replay", "hf"], default="replay")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=32, help="hf: per attempt.")
    parser.add_argument("--note", default="", help="A line on the run's conditions (e.g. other load).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each setting, alternating.")
    args = parser.parse_args()

    from engine.demo.runner import DemoSize, _demo_faces

    machine = common.machine()
    data_root = common.fresh_dir("loop-overlap-data")
    splits = _demo_faces(data_root, DemoSize(seed=args.seed, pool=args.pool, test=args.test, perception_steps=0))
    replay = replay_store(data_root / "faces" / "train", Path(splits["pool"]), data_root / "replay.jsonl")
    model = common.tiny_model_dir()
    warm_imports()
    # An untimed round first: the first loop in a process pays for one-time work (kernel selection,
    # file caches) that would otherwise land on whichever setting runs first.
    run_round(loop_section(common.fresh_dir("loop-overlap-warmup"), model, splits, replay, args), False)
    rows = []
    for repeat in range(args.repeats):
        for overlap in ((False, True) if repeat % 2 == 0 else (True, False)):
            root = common.fresh_dir(f"loop-overlap-{'on' if overlap else 'off'}")
            rows.append(run_round(loop_section(root, model, splits, replay, args), overlap))
            common.print_table("loop round", rows)
    on = [r for r in rows if r["overlap"] == "yes"]
    off = [r for r in rows if r["overlap"] == "no"]
    ratios = [common.ratio_row(metric, common.median([r[column] for r in on]),
                               common.median([r[column] for r in off]), "< 1 (lower is better)")
              for metric, column in (("synthesis + retraining span, overlap vs sequential",
                                      "synth start -> retrain end s"),
                                     ("round wall time, overlap vs sequential", "round wall s"))]
    common.print_table("ratios", ratios)
    how = "every other one accepted, replay backend" if args.backend == "replay" else \
        f"hf backend, the GRPO model generating up to {args.max_new_tokens} tokens per attempt"
    notes = [f"{args.seed} seed faces, {args.pool} pool faces ({how}), "
             f"{args.test} test faces, partitions of {args.partition_size}, {args.generators} generator(s); one "
             "round, no stage evaluations, no control arm; training and evaluation in the driver (placement: "
             "driver), generators and filter on local Ray on the same cores"]
    if args.note:
        notes.append(args.note)
    common.record_run(f"loop overlap ({args.backend})", common.command_line(), machine, rows, ratios, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
