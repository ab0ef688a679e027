"""`fea eval`: generate answers without the label hint through a generator backend, then compute the
metrics overall and per source dataset, in two views side by side: `official` (the paper's
evaluation script, rule for rule: trainer.official_metrics) and `overall` (this project's normalised
view: trainer.metrics). Accuracy is over records with labels, AU F1 over records whose AUs are
known; each reports its n.

Writes OUT/predictions.jsonl (one line per sample, the fields every metric is computed from),
OUT/metrics.json, OUT/report.md and OUT/plots/*.png. Samples whose generation failed stay in with an
empty completion: they count as wrong, never skipped.
"""
from __future__ import annotations

import json
import logging
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

from trainer import report
from engine.data import storage
from engine.core.config import EvalSection, load_config
from engine.core.types import Sample, SamplingParams
from trainer.metrics import EvalRecord, Prediction, compute_metrics, confusion, gold_label, per_dataset, predict, rouge_l
from trainer.official_metrics import extract_au_pred_think, extract_label_pred_answer, official_metrics

log = logging.getLogger(__name__)

CHUNK = 256  # samples per generate call: bounds memory (images) while keeping backend batches full


def eval_config(data: str | None = None, model: str | None = None, out: str | None = None,
                backend: str | None = None, config_path: str | None = None, limit: int | None = None) -> EvalSection:
    given = {"data": data, "model.path": model, "out": out, "generation.backend": backend, "limit": limit}
    overrides = {key: value for key, value in given.items() if value is not None}
    return load_config(EvalSection, config_path, overrides, section="eval" if config_path else None)


# ---------------------------------------------------------------- generation
def _chunks(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    while chunk := list(islice(samples, size)):
        yield chunk


def generate_records(cfg: EvalSection) -> list[EvalRecord]:
    """Every test sample with its completion, generated greedily (by default) with no label hint."""
    from tqdm import tqdm

    from engine.backends.base import create
    from engine.data.dataset import iter_samples
    from engine.core.prompts import make_request

    # s3:// folders are copied once to a local cache; the replay backend serves stored completions, no model
    model_dir = storage.materialize(cfg.model.path) if cfg.model.path else None
    adapter = storage.materialize(cfg.model.adapter) if cfg.model.adapter else None
    gen = cfg.generation
    params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                            n=1, seed=gen.seed)
    backend = create(gen.backend, model_dir, adapter, gen, cfg.model.dtype)
    records: list[EvalRecord] = []
    try:
        samples = islice(iter_samples(cfg.data), cfg.limit)
        with tqdm(desc="eval", unit="sample") as bar:
            for chunk in _chunks(samples, CHUNK):
                attempts = backend.generate([make_request(s, 0, hint=False, style=cfg.prompt_style) for s in chunk], params)
                for sample, (attempt, *_) in zip(chunk, attempts, strict=True):
                    records.append(EvalRecord(sample.id, sample.dataset, sample.aus, sample.labels, sample.description,
                                              attempt.completion if attempt.error is None else "", attempt.error))
                bar.update(len(chunk))
    finally:
        backend.close()
    return records


# ---------------------------------------------------------------- outputs
def prediction_rows(records: Sequence[EvalRecord], predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    rows = []
    for r, p in zip(records, predictions, strict=True):
        rows.append({
            "id": r.sample_id, "dataset": r.dataset, "gold_aus": list(r.gold_aus), "gold_labels": list(r.gold_labels),
            "completion": r.completion, "error": r.error, "pred_label": p.label, "pred_aus": list(p.aus),
            "format_ok": p.format_ok, "correct": (p.label == gold_label(r)) if r.gold_labels else None,
            "official_pred_aus": extract_au_pred_think(r.completion),
            "official_pred_labels": extract_label_pred_answer(r.completion),
            "rouge_l": rouge_l(r.completion, r.gold_description) if r.gold_description.strip() else None,
        })
    return rows


def write_report(metrics: dict[str, Any], out: Path) -> dict[str, str]:
    """OUT/report.md with the tables, OUT/plots/confusion.png and OUT/plots/per_au_f1.png."""
    plots = out / "plots"
    overall, conf = metrics["overall"], metrics["confusion"]
    files = {"confusion": report.plot_confusion_matrix(conf["matrix"], conf["rows"], conf["columns"],
                                                       plots / "confusion.png", "Emotion: gold vs predicted"),
             "per_au_f1": report.plot_bars(overall["per_au_f1"], plots / "per_au_f1.png", "F1 per AU", "F1")}
    headers = ["split", "view", "n", "emotion acc (n)", "AU F1 macro (n)", "AU F1 micro", "ROUGE-L F", "format rate",
               "errors"]

    def row(name: str, view: str, m: dict[str, Any]) -> list[Any]:
        return [name, view, m["n"], f"{_shown(m['emotion_accuracy'])} ({m['emotion_n']})",
                f"{_shown(m['au_macro_f1'])} ({m['au_n']})", m["au_micro_f1"], m["rouge_l_f"],
                m.get("format_rate"), m.get("errors")]

    rows = [row("all", "official", metrics["official"]), row("all", "normalised", overall)]
    for name, m in metrics["per_dataset"].items():
        rows += [row(name, "official", metrics["official_per_dataset"][name]), row(name, "normalised", m)]
    sections = [
        ("Setup", report.markdown_table(["data", "model", "adapter", "backend"],
                                        [[metrics["data"], metrics["model"], metrics["adapter"], metrics["backend"]]])),
        ("Metrics", report.markdown_table(headers, rows) + "\n\n`official` follows the paper's evaluation script "
         "rule for rule (AUs from the first <think>, labels from the first <answer> split on , ; and spaces, first "
         "predicted vs first gold, macro F1 over the AUs with gold positives); `normalised` is this project's view "
         "(normalised AU ids and labels). Accuracy is over records with labels and counts missing answers as wrong; "
         "AU F1 is over records whose AUs are known; sources without either have none (—)."),
        ("AU F1 per AU", report.markdown_table(["AU", "F1"], list(overall["per_au_f1"].items())) + "\n\n"
         + report.image_link(files["per_au_f1"], out, "per-AU F1")),
        ("Confusion matrix", report.image_link(files["confusion"], out, "confusion matrix")),
    ]
    files["report"] = report.write_markdown(out / "report.md", "Evaluation", sections)
    return {name: str(path) for name, path in files.items()}


def _shown(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _official_by_dataset(records: Sequence[EvalRecord]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[EvalRecord]] = {}
    for record in records:
        groups.setdefault(record.dataset, []).append(record)
    return {name: official_metrics(group) for name, group in sorted(groups.items())}


def run_eval(cfg: EvalSection) -> dict[str, Any]:
    if not cfg.data or not cfg.out or not (cfg.model.path or cfg.generation.backend == "replay"):
        raise ValueError("evaluation needs data, a model and an output folder (--data, --model, --out)")
    if storage.is_s3(cfg.out):
        raise ValueError("evaluation writes a local report: give a local --out")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = generate_records(cfg)
    if not records:
        raise ValueError(f"{storage.redact(cfg.data)} holds no usable sample to evaluate")
    predictions = [predict(r) for r in records]
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as lines:
        for row in prediction_rows(records, predictions):
            lines.write(json.dumps(row, sort_keys=True) + "\n")
    metrics = {
        "data": storage.redact(cfg.data), "model": storage.redact(cfg.model.path) or None,
        "adapter": storage.redact(cfg.model.adapter) if cfg.model.adapter else None,
        "backend": cfg.generation.backend, "generation": cfg.generation.model_dump(mode="json"),
        "n": len(records), "overall": compute_metrics(records, predictions).as_dict(),
        "official": official_metrics(records),
        "views": {"official": "the paper's evaluation script, rule for rule (trainer/official_metrics.py)",
                  "overall": "normalised: this project's view (trainer/metrics.py)"},
        "per_dataset": {name: m.as_dict() for name, m in per_dataset(records, predictions).items()},
        "official_per_dataset": _official_by_dataset(records),
        "confusion": confusion(records, predictions),
    }
    metrics["files"] = {"predictions": str(out / "predictions.jsonl"), "metrics": str(out / "metrics.json"),
                        **write_report(metrics, out)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
