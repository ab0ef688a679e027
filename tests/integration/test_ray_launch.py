"""The Ray launch path: one `accelerate launch` per Ray node running `fea train`; here one CPU node."""
from __future__ import annotations

import json
from pathlib import Path

from trainer.ray_launch import main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "cpu-smoke.yaml"


def test_training_launched_through_ray_and_accelerate(tiny_model, faces, tmp_path):
    out = tmp_path / "out"
    assert main(["--nodes", "1", "--cpus-per-node", "1", "--", "train", "sft", "--config", str(SMOKE),
                 "--data", str(faces / "samples.jsonl"), "--model", str(tiny_model), "--out", str(out),
                 "--max-steps", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and (out / "merged" / "config.json").exists()
