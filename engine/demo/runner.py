"""`fea demo`: the embedded default world run end to end. It builds the tiny model (with its perception
pretraining), renders the seed, pool and test faces from disjoint seed streams, and runs the loop
and its control arm on a private local Ray (configs/demo.yaml)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.loop.console import close_run_logging, print_summary, setup_run_logging, stage
from engine.core.config import LoopConfig, load_config
from engine.demo.faces import write_face_set
from engine.demo.tinymodel import MARKER_FILE, build_tiny_model
from engine.loop.rounds import run_loop

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# Seed streams of the demo's face sets: training (seed set + pool) and test never share a face, and the
# perception pretraining draws from its own stream (engine.demo.perception.PERCEPTION_SEED_BASE).
TRAIN_FACES_SEED, TEST_FACES_SEED = 0, 1


@dataclass(frozen=True)
class DemoSize:
    seed: int = 48  # faces with reference reasoning
    pool: int = 2880  # labelled faces whose reasoning is synthesised, 1,440 more each round
    test: int = 300  # held-out faces
    perception_steps: int = 300  # 0: no perception pretraining


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return str(path)


def _demo_faces(root: Path, size: DemoSize) -> dict[str, str]:
    """seed (reasoning kept) and pool (labels only: its reasoning is what the loop synthesises) from the
    training stream, test from its own stream."""
    train_dir, test_dir = root / "faces" / "train", root / "faces" / "test"
    if not (train_dir / "samples.jsonl").exists():
        write_face_set(train_dir, n=size.seed + size.pool, seed=TRAIN_FACES_SEED)
    if not (test_dir / "samples.jsonl").exists():
        write_face_set(test_dir, n=size.test, seed=TEST_FACES_SEED)
    train = [json.loads(line) for line in (train_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    test = [json.loads(line) for line in (test_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {"seed": _write_jsonl(train_dir / "seed.jsonl", train[:size.seed]),
            "pool": _write_jsonl(train_dir / "pool.jsonl", [{**r, "description": ""} for r in train[size.seed:]]),
            "test": _write_jsonl(test_dir / "test.jsonl", test)}


def _demo_model(root: Path, size: DemoSize) -> tuple[Path, dict[str, Any] | None]:
    """The tiny model, perception-pretrained unless size.perception_steps is 0; built once per run folder."""
    model = root / "model"
    if not (model / MARKER_FILE).exists():
        build_tiny_model(model, seed=0, perception_steps=size.perception_steps)
    marker = json.loads((model / MARKER_FILE).read_text())
    return model, marker.get("perception")


def run_demo(out: str = "demo-out", size: DemoSize = DemoSize(), config_path: str | Path = DEMO_CONFIG,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tiny model + synthetic faces + local Ray + the loop and its control arm on CPU; returns the
    run summary. Rerunning with the same `out` resumes the run where it stopped."""
    if not Path(config_path).exists():
        raise FileNotFoundError(f"{config_path} is missing: run the demo from a checkout (pip install -e .)")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    resume = (root / "run" / "round-00").exists()
    setup_run_logging(root)
    try:
        with stage("tiny model and perception pretraining"):
            model, perception = _demo_model(root, size)
        with stage(f"faces: {size.seed} seed, {size.pool} pool, {size.test} test"):
            splits = _demo_faces(root, size)
        cfg = load_config(LoopConfig, config_path, section="loop", overrides={
            "out": str(root / "run"), "base_model.path": str(model), "seed_data": [splits["seed"]],
            "pool": splits["pool"], "test": splits["test"], **(overrides or {})})
        summary = run_loop(cfg, resume=resume, perception=perception)
        print_summary(summary)
        return summary
    finally:
        close_run_logging()
