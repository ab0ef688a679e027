"""The run report on folders written by the real evaluation (trainer.eval.run_eval, replay backend):
the stage figures agree with metrics.json, and the report's plots and gallery are there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.loop.report import StageEval, build_summary, stage_row, write_run_report
from tests.support.run_report import loop_config, make_records, rounds_with_synthesis, write_test_set
from trainer.eval import eval_config, run_eval


def evaluate(tmp_path: Path, test: Path, name: str, accuracy: float, seed: int) -> StageEval:
    """run_eval on the test set, serving the completions of make_records; one sample has none stored."""
    records = make_records(48, accuracy, seed)
    stored = tmp_path / f"{name}-completions.jsonl"
    stored.write_text("".join(json.dumps({"sample_id": r.sample_id, "attempt": 0, "completion": r.completion}) + "\n"
                              for r in records[1:]))
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"eval": {"generation": {"backend": "replay", "replay_path": str(stored)}}}))
    out = tmp_path / "evals" / name
    run_eval(eval_config(data=str(test), out=str(out), config_path=str(config)))
    return StageEval(name, None if name in ("base", "sft_seed", "control") else int(name[-2:]), str(out),
                     str(tmp_path / "models" / name))


def test_report_and_summary_from_real_evaluation_folders(tmp_path):
    test = write_test_set(tmp_path / "test", make_records(48, 0.5))
    stages = [evaluate(tmp_path, test, name, acc, i) for i, (name, acc) in enumerate(
        [("base", 0.2), ("sft_seed", 0.4), ("grpo-00", 0.45), ("retrain-00", 0.55), ("grpo-01", 0.6),
         ("retrain-01", 0.8), ("control", 0.4)])]
    for one in stages:
        overall = json.loads((Path(one.eval_dir) / "metrics.json").read_text())["overall"]
        row = stage_row(one, resamples=300)
        assert overall["errors"] == 1 and row["n"] == overall["n"] == 48
        for metric in ("emotion_accuracy", "au_macro_f1", "au_micro_f1", "format_rate"):
            assert row[metric] == pytest.approx(overall[metric])
            assert row[f"{metric}_ci95"][0] <= row[metric] <= row[f"{metric}_ci95"][1]
    summary = build_summary(stages, [{"round": 0, "inputs": 10, "accepted": 8}], test_n=48, wall_seconds=3.0,
                            existing={"rounds": 2}, resamples=300)
    assert summary["final"]["name"] == "retrain-01" and summary["control"]["name"] == "control"
    cfg = loop_config(tmp_path, test)
    text = Path(write_run_report(cfg, rounds_with_synthesis(tmp_path, stages), stages=stages)).read_text()
    for name in ("stage_accuracy", "stage_au_f1", "final_confusion", "final_per_au_f1"):
        assert (tmp_path / "run" / "plots" / f"{name}.png").stat().st_size > 1000
    assert len(list((tmp_path / "run" / "gallery").glob("test-*.png"))) == 6
    assert "`face-0000`" in text and "(empty output)" in text  # its generation failed: shown empty, counted wrong


def test_run_log_and_stage_figures_with_the_run_folder_on_s3(s3, tmp_path):
    from engine.loop.console import close_run_logging, setup_run_logging, stage
    from engine.data import storage

    run = f"s3://fea-test/report-{tmp_path.name}"
    setup_run_logging(run)
    try:
        with stage("retrain-00"):
            print("{'loss': 0.25, 'epoch': 1.0}")
    finally:
        close_run_logging()
    assert "{'loss': 0.25, 'epoch': 1.0}" in storage.read_text(f"{run}/run.log")
    test = write_test_set(tmp_path / "test", make_records(48, 0.5))
    local = evaluate(tmp_path, test, "retrain-00", 0.6, 0)
    storage.upload_dir(local.eval_dir, f"{run}/round-00/eval")
    remote = StageEval("retrain-00", 0, f"{run}/round-00/eval", local.model)
    assert stage_row(remote, resamples=200) == stage_row(local, resamples=200)
