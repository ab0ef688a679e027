"""`fea train sft` killed with SIGKILL after a checkpoint, rerun with --resume: it continues from that
checkpoint's step instead of starting over (a real subprocess, a real kill)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

MAX_STEPS = 24
CONFIG = {"sft": {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "learning_rate": 1.0e-3, "max_steps": MAX_STEPS, "per_device_train_batch_size": 1, "precision": "fp32",
    "shuffle_buffer": 0, "save_steps": 2, "save_total_limit": 3, "logging_steps": 1, "report_to": ["none"],
}}


def _complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def test_resume_after_kill_continues_from_the_last_checkpoint(tiny_model, faces, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine.cli", "train", "sft", "--config", str(config), "--data",
           str(faces / "samples.jsonl"), "--model", str(tiny_model), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 300
    try:
        while not _complete_checkpoints(out) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "summary.json").exists()  # it really died mid-run
    killed_at = max(_complete_checkpoints(out))
    assert 0 < killed_at < MAX_STEPS

    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at  # the newest complete checkpoint
    assert summary["global_step"] == MAX_STEPS
    assert summary["steps_run"] == MAX_STEPS - summary["resumed_from_step"] < MAX_STEPS
    # One loss per step 1..MAX_STEPS: the history restored from the checkpoint, then the steps after it.
    steps = [e["step"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert (out / "merged" / "model.safetensors").exists()
