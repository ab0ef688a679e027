"""`fea eval` end to end: generation through a backend, metrics.json, predictions, report and plots."""
from __future__ import annotations

import json
from statistics import mean

import pytest
import yaml
from PIL import Image

from engine.cli.main import main
from engine.data.dataset import iter_samples


def _read(out):
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics, rows


def _assert_outputs_exist(out):
    for name in ("metrics.json", "predictions.jsonl", "report.md", "plots/confusion.png", "plots/per_au_f1.png"):
        assert (out / name).exists(), name
    for png in ("confusion.png", "per_au_f1.png"):
        with Image.open(out / "plots" / png) as image:
            assert image.format == "PNG" and image.size[0] > 100
    report = (out / "report.md").read_text()
    assert "plots/confusion.png" in report and "plots/per_au_f1.png" in report and "AU F1 macro" in report


def _assert_consistent(metrics, rows):
    """metrics.json agrees with predictions.jsonl, recomputed here by hand."""
    overall = metrics["overall"]
    assert overall["n"] == metrics["n"] == len(rows)
    labelled = [r for r in rows if r["gold_labels"]]
    assert overall["emotion_accuracy"] == pytest.approx(mean(r["correct"] for r in labelled))
    assert overall["format_rate"] == pytest.approx(mean(r["format_ok"] for r in rows))
    assert overall["rouge_l_f"] == pytest.approx(mean(r["rouge_l"] for r in rows if r["rouge_l"] is not None))
    for au, f1 in overall["per_au_f1"].items():
        tp = sum(au in r["gold_aus"] and au in r["pred_aus"] for r in rows)
        fp = sum(au not in r["gold_aus"] and au in r["pred_aus"] for r in rows)
        fn = sum(au in r["gold_aus"] and au not in r["pred_aus"] for r in rows)
        assert f1 == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0), au
    assert overall["au_macro_f1"] == pytest.approx(mean(overall["per_au_f1"].values()))
    cm = metrics["confusion"]
    assert sum(map(sum, cm["matrix"])) == len(labelled)
    assert sum(cm["matrix"][i][cm["columns"].index(g)] for i, g in enumerate(cm["rows"]) if g in cm["columns"]) \
        == sum(r["correct"] for r in labelled)


def test_eval_with_the_tiny_model_on_the_hf_backend(tiny_model, faces, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"eval": {"generation": {"max_new_tokens": 16, "batch_size": 8}}}))
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(faces / "samples.jsonl"), "--model", str(tiny_model), "--out", str(out),
                 "--backend", "hf", "--config", str(config), "--limit", "6"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics, rows = _read(out)
    assert printed["overall"] == metrics["overall"]
    assert metrics["backend"] == "hf" and metrics["n"] == 6
    samples = list(iter_samples(str(faces / "samples.jsonl")))[:6]
    assert [r["id"] for r in rows] == [s.id for s in samples]
    assert all(r["error"] is None and r["completion"] for r in rows)  # the model generated for every sample
    assert "Ground Truth".lower() not in json.dumps(rows).lower()
    assert set(metrics["per_dataset"]) == {"SynthFaces"}
    _assert_outputs_exist(out)
    _assert_consistent(metrics, rows)


def test_eval_metrics_on_stored_completions(faces, tmp_path):
    """The replay backend serves hand-made completions, so the metrics are known in advance: right,
    wrong label, empty answer, no format, and one sample with no stored completion at all."""
    samples = list(iter_samples(str(faces / "samples.jsonl")))[:5]
    a, b, c, d, e = samples
    other = next(x for x in ("anger", "fear") if x != b.labels[0])
    stored = [
        {"sample_id": a.id, "attempt": 0, "completion": a.description},  # the reference itself
        {"sample_id": b.id, "attempt": 0, "completion": b.description.replace(f"<answer>{b.labels[0]}</answer>",
                                                                              f"<answer>{other}</answer>")},
        {"sample_id": c.id, "attempt": 0, "completion": c.description.split("<answer>")[0] + "<answer></answer>"},
        {"sample_id": d.id, "attempt": 0, "completion": f"it looks {d.labels[0]}"},
    ]  # e: nothing stored -> an error attempt, counted as wrong
    replay = tmp_path / "stored.jsonl"
    replay.write_text("\n".join(json.dumps(r) for r in stored) + "\n")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"eval": {"generation": {"backend": "replay", "replay_path": str(replay)}}}))
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(faces / "samples.jsonl"), "--out", str(out), "--config", str(config),
                 "--limit", "5"]) == 0
    metrics, rows = _read(out)
    overall = metrics["overall"]
    assert [r["correct"] for r in rows] == [True, False, False, False, False]
    assert overall["emotion_accuracy"] == pytest.approx(1 / 5)
    assert overall["format_rate"] == pytest.approx(3 / 5)
    assert overall["errors"] == 1 and rows[4]["error"].startswith("replay_missing") and rows[4]["completion"] == ""
    assert rows[0]["rouge_l"] == pytest.approx(1.0) and rows[4]["rouge_l"] == 0.0
    assert rows[2]["pred_label"] is None and rows[1]["pred_label"] == other
    # a, b and c mention exactly their gold AUs; d and e mention none
    assert [set(r["pred_aus"]) == set(s.aus) for r, s in zip(rows, samples)] == [True, True, True, False, False]
    # the official view beside it: first <answer> split on , ; and spaces; "it looks ..." reads "it"
    official = metrics["official"]
    assert official["emotion_accuracy"] == pytest.approx(1 / 5) and official["emotion_n"] == 5
    assert rows[3]["official_pred_labels"][0] == "it"
    assert "official" in (out / "report.md").read_text() and "normalised" in (out / "report.md").read_text()
    assert set(metrics["official_per_dataset"]) == set(metrics["per_dataset"])
    _assert_outputs_exist(out)
    _assert_consistent(metrics, rows)
