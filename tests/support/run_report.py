"""Small evaluation folders, test sets and synthesis outputs as the loop leaves them, for the run
report's tests: predictions.jsonl and metrics.json as trainer.eval writes them, a FEA-20K JSONL test
set with PNGs, and committed accepted Parquet shards."""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.core.config import LoopConfig
from engine.core.types import PartitionCommit, Sample, sha256_hex
from engine.data import shards
from engine.loop.report import StageEval
from trainer.eval import prediction_rows
from trainer.metrics import EvalRecord, compute_metrics, predict

LABELS = ["happiness", "sadness", "anger", "surprise"]
AUS = {"happiness": ["AU6", "AU12"], "sadness": ["AU1", "AU4", "AU15"], "anger": ["AU4", "AU7", "AU23"],
       "surprise": ["AU1", "AU2", "AU26"]}


def make_records(n: int, accuracy: float, seed: int = 0) -> list[EvalRecord]:
    """Records whose completions name the right emotion with probability `accuracy`, some AUs right,
    some hallucinated; a few records have unknown labels, unknown AUs or the explicit no-AU form."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        gold = LABELS[i % len(LABELS)]
        gold_aus = [] if i % 9 == 4 else ["AU0"] if i % 9 == 7 else AUS[gold]
        said = gold if rng.random() < accuracy else rng.choice([x for x in LABELS if x != gold])
        named = [au for au in AUS[said] if rng.random() < 0.8] + (["AU20"] if rng.random() < 0.2 else [])
        completion = f"<think>I see {', '.join(named)}.</think><answer>{said}</answer>" if i % 10 else "no idea"
        records.append(EvalRecord(f"face-{i:04d}", "SynthFaces", tuple(gold_aus),
                                  () if i % 11 == 5 else (gold,), "", completion))
    return records


def write_eval_dir(folder: Path, records: list[EvalRecord]) -> Path:
    """predictions.jsonl and metrics.json (its `overall`) as trainer.eval.run_eval writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    predictions = [predict(r) for r in records]
    rows = prediction_rows(records, predictions)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    overall = compute_metrics(records, predictions).as_dict()
    (folder / "metrics.json").write_text(json.dumps({"n": len(records), "overall": overall}))
    return folder




def png(seed: int, size: int = 112) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_test_set(folder: Path, records: list[EvalRecord]) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, r in enumerate(records):
        (folder / "images" / f"{r.sample_id}.png").write_bytes(png(i))
        lines.append(json.dumps({"id": r.sample_id, "dataset": r.dataset, "image": f"images/{r.sample_id}.png",
                                 "AUs": list(r.gold_aus), "labels": list(r.gold_labels)}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "test.jsonl"


def write_synthesis_output(out: Path, count: int) -> None:
    """Committed accepted Parquet shard, as the synthesis writer leaves it."""
    rows = []
    for i in range(count):
        image = png(100 + i)
        label = LABELS[i % len(LABELS)]
        sample = Sample(f"pool-{i}", "SynthFaces", image, sha256_hex(image), f"images/pool-{i}.png", "q",
                        tuple(AUS[label]), (label,))
        rows.append(shards.accepted_row(sample, f"<think>{' '.join(AUS[label])}</think><answer>{label}</answer>",
                                        {"job_id": "round-01", "attempts": 1 + i % 2}, {"au": 1, "acc": 1, "format": 1,
                                                                                        "total": 3}))
    ref = shards.write_parquet(str(out / "accepted" / "part-00000.parquet"), rows, shards.ACCEPTED_SCHEMA)
    ref = replace(ref, uri="accepted/part-00000.parquet")  # relative to the output, as commits store it
    commit = PartitionCommit("round-01", 0, "x", count, count, 0, 0, {"1": count}, 0, (ref,))
    (out / "commits").mkdir(parents=True)
    (out / "commits" / "part-00000.json").write_text(commit.to_json())


@dataclass
class Round:
    index: int
    steps: dict[str, Any] = field(default_factory=dict)


def rounds_with_synthesis(tmp_path: Path, stages: list[StageEval]) -> list[Round]:
    rounds = []
    for index in (0, 1):
        out = tmp_path / f"round-{index:02d}" / "synth" / "out"
        write_synthesis_output(out, 8)
        overall = json.loads((Path(stages[3 + 2 * index].eval_dir) / "metrics.json").read_text())["overall"]
        rounds.append(Round(index, {
            "synth": {"out": str(out), "seconds": 5.0, "summary": {"inputs": 10, "accepted": 8, "rejected": 2,
                                                                   "quarantined": 0}},
            "retrain": {"seconds": 30.0, "train": {"data": {"rows": 20 + 8 * index}}},
            "eval": {"seconds": 4.0, "metrics": {"overall": {**overall, "rouge_l_f": None}}}}))
    return rounds


def loop_config(tmp_path: Path, test: Path) -> LoopConfig:
    return LoopConfig(out=str(tmp_path / "run"), base_model={"path": str(tmp_path / "model")},
                      seed_data=(str(test),), pool=str(test), test=str(test))
