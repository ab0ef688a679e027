"""Stage figures with bootstrap intervals, the summary's shape, and the run report with plots and gallery,
on small evaluation folders written here the way trainer.eval writes them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.loop.report import StageEval, build_summary, stage_row, write_run_report
from engine.loop.stage_stats import METRICS, MetricsMismatch, RecordStatistic, load_predictions
from tests.support.run_report import (AUS, LABELS, loop_config, make_records, rounds_with_synthesis, write_eval_dir,
                                      write_test_set)
from trainer.metrics import EvalRecord, au_f1, compute_metrics, predict


def stage(tmp_path: Path, name: str, n: int, accuracy: float, round_index: int | None = None, seed: int = 0):
    folder = write_eval_dir(tmp_path / "evals" / name, make_records(n, accuracy, seed))
    return StageEval(name, round_index, str(folder), str(tmp_path / "models" / name))


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


# ---------------------------------------------------------------- stage_row
def test_stage_row_equals_what_evaluation_computed_and_each_interval_holds_it(tmp_path):
    row = stage_row(stage(tmp_path, "retrain-00", 240, 0.7, 0), resamples=500)
    overall = json.loads((Path(tmp_path) / "evals/retrain-00/metrics.json").read_text())["overall"]
    assert row["name"] == "retrain-00" and row["round"] == 0 and row["n"] == overall["n"] == 240
    for metric in METRICS:
        assert row[metric] == pytest.approx(overall[metric])
        lo, hi = row[f"{metric}_ci95"]
        assert lo <= row[metric] <= hi and lo < hi, metric
    assert row["emotion_n"] == overall["emotion_n"] < 240 and row["au_n"] == overall["au_n"] < 240


def test_intervals_narrow_with_more_records(tmp_path):
    few = stage_row(stage(tmp_path, "few", 40, 0.6), resamples=500)
    many = stage_row(stage(tmp_path, "many", 800, 0.6), resamples=500)
    for metric in ("emotion_accuracy", "au_macro_f1", "au_micro_f1"):
        assert width(many[f"{metric}_ci95"]) < 0.6 * width(few[f"{metric}_ci95"]), metric


def test_the_same_seed_gives_the_same_intervals_and_another_seed_other_ones(tmp_path):
    one = stage(tmp_path, "base", 120, 0.5)
    assert stage_row(one, seed=3) == stage_row(one, seed=3)
    assert stage_row(one, seed=3)["emotion_accuracy_ci95"] != stage_row(one, seed=4)["emotion_accuracy_ci95"]


def test_the_resampled_statistic_follows_the_metric_rules_on_any_resample():
    records = make_records(90, 0.5, seed=1)
    data = load_predictions_of(records)
    statistic = RecordStatistic(data)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(records), size=(5, len(records)))
    values = statistic(draws)
    for k, idx in enumerate(draws):
        expected = compute_metrics([records[i] for i in idx]).as_dict()
        for m, metric in enumerate(METRICS):
            assert values[m, k] == pytest.approx(expected[metric]), metric


def load_predictions_of(records: list[EvalRecord]):
    import tempfile

    return load_predictions(write_eval_dir(Path(tempfile.mkdtemp()), records))


def _other_rule_values(records: list[EvalRecord]) -> dict[str, float]:
    """AU F1 under rules trainer.metrics does not use: unknown gold AUs read as "none present", and
    macro averaged over every AU predicted too."""
    predictions = [predict(r) for r in records]
    gold = [set(r.gold_aus) - {"AU0"} for r in records]
    pred = [set(p.aus) for p in predictions]
    unknown_as_empty = au_f1(gold, pred)[0]
    _, _, per_au = au_f1(gold + [set().union(*pred)], pred + [set()])
    return {"unknown AUs as none": unknown_as_empty, "macro over predicted AUs": sum(per_au.values()) / len(per_au)}


@pytest.mark.parametrize("rule", ["unknown AUs as none", "macro over predicted AUs"])
def test_a_metrics_file_computed_with_other_au_rules_is_refused(tmp_path, rule):
    one = stage(tmp_path, "grpo-00", 150, 0.6, 0)
    stored = Path(one.eval_dir) / "metrics.json"
    metrics = json.loads(stored.read_text())
    other = _other_rule_values(make_records(150, 0.6))[rule]
    assert other != pytest.approx(metrics["overall"]["au_macro_f1"])  # the rules really differ here
    metrics["overall"]["au_macro_f1"] = other
    stored.write_text(json.dumps(metrics))
    with pytest.raises(MetricsMismatch, match="au_macro_f1"):
        stage_row(one)


# ---------------------------------------------------------------- build_summary
STAGES = [("base", None, 0.25), ("sft_seed", None, 0.4), ("grpo-00", 0, 0.45), ("retrain-00", 0, 0.55),
          ("grpo-01", 1, 0.6), ("retrain-01", 1, 0.7), ("control", None, 0.42)]


def all_stages(tmp_path: Path, n: int = 60) -> list[StageEval]:
    return [stage(tmp_path, name, n, acc, r, seed=i) for i, (name, r, acc) in enumerate(STAGES)]


def test_build_summary_has_the_documented_shape(tmp_path):
    stages = all_stages(tmp_path)
    synthesis = [{"round": 0, "inputs": 100, "accepted": 40, "rejected": 58, "quarantined": 2},
                 {"round": 1, "inputs": 60, "accepted": 30, "rejected": 30, "quarantined": 0}]
    summary = build_summary(stages, synthesis, test_n=60, wall_seconds=612.5, resamples=200,
                            existing={"out": "demo-out/run", "rounds": 2, "test_n": -1, "report": "r.md"})
    assert summary["out"] == "demo-out/run" and summary["rounds"] == 2 and summary["report"] == "r.md"
    assert summary["test_n"] == 60 and summary["wall_seconds"] == 612.5
    assert [s["name"] for s in summary["stages"]] == [name for name, _, _ in STAGES if name != "control"]
    assert [s["round"] for s in summary["stages"]] == [None, None, 0, 0, 1, 1]
    assert summary["control"]["name"] == "control" and summary["final"] == summary["stages"][-1]
    fields = {"name", "round", "emotion_accuracy", "emotion_accuracy_ci95", "au_macro_f1", "au_macro_f1_ci95",
              "au_micro_f1", "format_rate", "n"}
    for row in [*summary["stages"], summary["control"]]:
        assert fields <= set(row)
        assert row == stage_row(next(s for s in stages if s.name == row["name"]), resamples=200)
    assert summary["synthesis"] == [{"round": 0, "inputs": 100, "accepted": 40, "acceptance": 40 / 98},
                                    {"round": 1, "inputs": 60, "accepted": 30, "acceptance": 0.5}]
    json.dumps(summary, allow_nan=False)  # scripts read it as plain JSON


# ---------------------------------------------------------------- write_run_report
def test_report_shows_stages_with_intervals_plots_and_gallery(tmp_path):
    stages = all_stages(tmp_path)
    cfg = loop_config(tmp_path, write_test_set(tmp_path / "test", make_records(60, 0.7, seed=5)))
    seconds = {"perception": 40.0, "sft_seed": 46.0, "grpo-00": 12.5, "control": 50.0}
    path = Path(write_run_report(cfg, rounds_with_synthesis(tmp_path, stages), "reached 2 rounds", stages=stages,
                                 perception={"seconds": 40.2, "faces": 2000, "steps": 300},
                                 seconds_per_stage=seconds))
    run = tmp_path / "run"
    text = path.read_text()
    for name in ("stage_accuracy", "stage_au_f1", "final_confusion", "final_per_au_f1", "quality"):
        with Image.open(run / "plots" / f"{name}.png") as image:
            assert image.format == "PNG" and image.size[0] > 200
        assert f"plots/{name}.png" in text
    gallery = sorted(p.name for p in (run / "gallery").iterdir())
    assert gallery == [f"synth-{i}.png" for i in range(1, 7)] + [f"test-{i}.png" for i in range(1, 7)]
    for name in gallery:
        assert f"gallery/{name}" in text
        with Image.open(run / "gallery" / name) as image:
            assert max(image.size) <= 128
    final_rows = load_predictions(stages[-2].eval_dir).rows
    shown = [r for r in final_rows if f"`{r['id']}`" in text.split("## Gallery: held-out faces")[1]]
    assert len(shown) == 6 and all(r["completion"].strip() in text for r in shown)
    assert "pool-0" in text and "<answer>happiness</answer>" in text
    final = stage_row(stages[-2])
    lo, hi = final["emotion_accuracy_ci95"]
    assert f"{final['emotion_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    assert "Final model (retrain-01) vs control arm" in text and "40.2 s, 2000 faces, 300 steps" in text
    assert "| grpo-00 | 12.50 |" in text and "| total | 148.50 |" in text


def test_report_without_stages_keeps_the_round_tables(tmp_path):
    stages = all_stages(tmp_path, n=20)
    cfg = loop_config(tmp_path, write_test_set(tmp_path / "test", make_records(20, 0.5)))
    text = Path(write_run_report(cfg, rounds_with_synthesis(tmp_path, stages))).read_text()
    assert "## Rounds" in text and "## Seconds per stage" in text and "## Stages" not in text
    assert "| 0 | 10 | 8 | 0.800 |" in text  # synthesis per round: round, inputs, accepted, acceptance
    assert (tmp_path / "run" / "plots" / "quality.png").exists() and not (tmp_path / "run" / "gallery").exists()


def test_a_stage_right_on_every_record_gets_a_point_interval(tmp_path):
    records = [EvalRecord(f"f{i}", "SynthFaces", tuple(AUS[LABELS[i % 4]]), (LABELS[i % 4],), "",
                          f"<think>{' '.join(AUS[LABELS[i % 4]])}</think><answer>{LABELS[i % 4]}</answer>")
               for i in range(40)]
    row = stage_row(StageEval("retrain-01", 1, str(write_eval_dir(tmp_path / "eval", records)), "m"), resamples=200)
    for metric in METRICS:
        assert row[metric] == 1.0 and row[f"{metric}_ci95"] == [1.0, 1.0], metric
