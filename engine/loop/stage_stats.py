"""Held-out metrics of one evaluated model with 95% bootstrap intervals, from its predictions.jsonl.

The point values come from trainer.metrics (the same functions `fea eval` uses); the intervals from
scipy.stats.bootstrap over test records (paired: one resample of records serves every metric). Per
resample each metric follows trainer.metrics' rules: accuracy over records with a gold label, AU F1
over records whose gold AUs are known, macro over the AUs with gold positives in that resample,
micro pooled over every AU column. Every statistic is a linear function of how often each record is
drawn, so a whole batch of resamples is one matrix product.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.facs import present_aus
from engine.data import storage
from trainer.metrics import EvalRecord, Prediction, compute_metrics, gold_label

METRICS = ("emotion_accuracy", "au_macro_f1", "au_micro_f1", "format_rate")
CONFIDENCE = 0.95


class MetricsMismatch(ValueError):
    """Recomputed metrics disagree with what evaluation computed or with the resampled statistic."""


@dataclass(frozen=True)
class StageData:
    """One evaluated model's records and predictions, as read back from predictions.jsonl."""

    records: list[EvalRecord]
    predictions: list[Prediction]
    rows: list[dict[str, Any]]


def load_predictions(eval_dir: str | Path) -> StageData:
    """predictions.jsonl of an evaluation folder, local or s3://."""
    text = storage.read_text(storage.join(str(eval_dir), "predictions.jsonl"))
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{storage.redact(str(eval_dir))}/predictions.jsonl holds no prediction")
    records = [EvalRecord(r["id"], r["dataset"], tuple(r["gold_aus"]), tuple(r["gold_labels"]), "",
                          r["completion"], r.get("error")) for r in rows]
    predictions = [Prediction(r["pred_label"], tuple(r["pred_aus"]), bool(r["format_ok"])) for r in rows]
    return StageData(records, predictions, rows)


def point_metrics(data: StageData) -> dict[str, Any]:
    """trainer.metrics' figures for these predictions (ROUGE-L is not recomputed: no reference is stored)."""
    return compute_metrics(data.records, data.predictions).as_dict()


# ---------------------------------------------------------------- the resampled statistic
class RecordStatistic:
    """The four metrics as functions of per-record draw counts (n records -> one value per metric)."""

    def __init__(self, data: StageData) -> None:
        labelled = [bool(r.gold_labels) for r in data.records]
        correct = [bool(r.gold_labels) and p.label is not None and p.label == gold_label(r)
                   for r, p in zip(data.records, data.predictions, strict=True)]
        self.n = len(data.records)
        self.labelled = np.array(labelled, dtype=float)
        self.correct = np.array(correct, dtype=float)
        self.formatted = np.array([p.format_ok for p in data.predictions], dtype=float)
        known = [bool(r.gold_aus) for r in data.records]  # unknown AUs: the record adds nothing to AU F1
        gold = [set(present_aus(r.gold_aus)) if k else set() for r, k in zip(data.records, known)]
        pred = [set(p.aus) if k else set() for p, k in zip(data.predictions, known)]
        columns = sorted(set().union(*gold, *pred))
        self.gold = np.array([[au in g for au in columns] for g in gold], dtype=float).reshape(self.n, len(columns))
        self.pred = np.array([[au in p for au in columns] for p in pred], dtype=float).reshape(self.n, len(columns))
        self.hits = self.gold * self.pred

    def counts(self, draws: np.ndarray) -> np.ndarray:
        """Record indices of shape (..., k) -> how often each of the n records is drawn, shape (m, n)."""
        draws = np.asarray(draws)
        flat = draws.astype(np.int64).reshape(-1, draws.shape[-1])
        counts = np.zeros((flat.shape[0], self.n))
        np.add.at(counts, (np.arange(flat.shape[0])[:, None], flat), 1.0)
        return counts

    def from_counts(self, counts: np.ndarray) -> np.ndarray:
        """(m, n) draw counts -> (4, m): accuracy, AU F1 macro, AU F1 micro, format rate."""
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = (counts @ self.correct) / (counts @ self.labelled)
            tp, gold, pred = counts @ self.hits, counts @ self.gold, counts @ self.pred
            per_au = np.where(gold > 0, 2 * tp / (gold + pred), np.nan)  # F1 = 2tp / (2tp + fp + fn)
            present = (gold > 0).sum(axis=1)
            macro = np.where(present > 0, np.nansum(per_au, axis=1) / np.maximum(present, 1), np.nan)
            total_gold = gold.sum(axis=1)
            micro = np.where(total_gold > 0, 2 * tp.sum(axis=1) / (total_gold + pred.sum(axis=1)), np.nan)
            formatted = (counts @ self.formatted) / counts.sum(axis=1)
        return np.stack([accuracy, macro, micro, formatted])

    def __call__(self, draws: np.ndarray, axis: int = -1) -> np.ndarray:
        draws = np.moveaxis(np.asarray(draws), axis, -1)
        values = self.from_counts(self.counts(draws))
        return values.reshape((len(METRICS), *draws.shape[:-1]))

    def on_all_records(self) -> dict[str, float | None]:
        values = self.from_counts(np.ones((1, self.n)))[:, 0]
        return {name: None if math.isnan(v) else float(v) for name, v in zip(METRICS, values)}


# ---------------------------------------------------------------- checks and intervals
def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_agreement(expected: dict[str, Any], found: dict[str, Any], what: str) -> None:
    """Raise MetricsMismatch naming every metric whose values differ."""
    differ = {name: (expected.get(name), found.get(name)) for name in METRICS
              if not _same(expected.get(name), found.get(name))}
    if differ:
        raise MetricsMismatch(f"{what}: " + ", ".join(f"{k} {a} != {b}" for k, (a, b) in differ.items()))


def bootstrap_intervals(statistic: RecordStatistic, *, resamples: int, seed: int) -> dict[str, list[float] | None]:
    """95% BCa intervals per metric; where BCa is undefined (e.g. every record correct, so every
    resample agrees) the percentile interval of the same bootstrap distribution stands in."""
    from scipy import stats

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):  # degenerate: handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((np.arange(statistic.n),), statistic, vectorized=True, n_resamples=resamples,
                                 confidence_level=CONFIDENCE, method="BCa", rng=np.random.default_rng(seed),
                                 batch=256)
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    tail = 100 * (1 - CONFIDENCE) / 2
    intervals: dict[str, list[float] | None] = {}
    for i, name in enumerate(METRICS):
        lo, hi = float(low[i]), float(high[i])
        if math.isnan(lo) or math.isnan(hi):
            values = result.bootstrap_distribution[i]
            values = values[~np.isnan(values)]
            lo, hi = (np.percentile(values, [tail, 100 - tail]) if values.size else (math.nan, math.nan))
        intervals[name] = None if math.isnan(lo) or math.isnan(hi) else [float(lo), float(hi)]
    return intervals


def metrics_with_intervals(eval_dir: str | Path, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Point values (checked against the resampled statistic on all records and, when the folder has
    one, against metrics.json's `overall`), 95% intervals, and the counts behind them."""
    data = load_predictions(eval_dir)
    point = point_metrics(data)
    statistic = RecordStatistic(data)
    check_agreement(point, statistic.on_all_records(),
                    f"{storage.redact(str(eval_dir))}: resampled statistic vs trainer.metrics")
    stored = storage.join(str(eval_dir), "metrics.json")
    if storage.exists(stored):
        check_agreement(json.loads(storage.read_text(stored))["overall"], point,
                        f"{storage.redact(str(eval_dir))}: metrics.json vs predictions")
    intervals = bootstrap_intervals(statistic, resamples=resamples, seed=seed)
    out: dict[str, Any] = {}
    for name in METRICS:
        out[name], out[f"{name}_ci95"] = point[name], intervals[name] if point[name] is not None else None
    out.update(n=point["n"], emotion_n=point["emotion_n"], au_n=point["au_n"])
    return out
