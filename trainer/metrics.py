"""This project's normalised view of the evaluation metrics, as pure functions over (gold,
completion) records. The official figures, computed rule for rule as the paper's evaluation
script does, are in trainer.official_metrics; `fea eval` reports both, each under its own name.

Rules of the normalised view (each also stated where it is computed):
- Emotion accuracy: the first label of the last <answer>...</answer> (split on "," and ";"),
  normalised (engine.core.facs.normalize_label: case, spaces, adjectives and simple synonyms),
  equals the normalised first gold label. A missing or empty answer counts as wrong, never skipped. Samples
  whose emotion is unknown (AU-only sources such as DISFA, BP4D) have no accuracy: None, not 0.
- AU F1 over samples whose AUs are known (a non-empty gold list; the no-AU form NO_AU is a known
  empty set): predicted AUs are the AU ids mentioned in the first <think>, or in the whole output
  when there is none (the official extraction), normalised by engine.core.verifier ("AU04", "au 4",
  "AU12B" -> "AU4", "AU12"). Per-AU F1 for each AU present in the gold; macro = their mean (the
  paper's AU F1); micro pools counts over the gold AUs and any AU predicted, so hallucinated AUs
  cost precision.
- ROUGE-L F (rouge-score, rougeL, stemmer on) of the completion against the gold description, over
  samples that have one; a missing completion scores 0.
- Format rate: share of completions the verifier's format check accepts.
Every metric is also computed per source dataset.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from engine.core.facs import au_number, normalize_label, present_aus
from engine.core.verifier import gold_label as verifier_gold_label
from engine.core.verifier import parse_completion, r_format

NO_ANSWER = "(none)"  # confusion-matrix column for missing, empty or unknown answers


@dataclass(frozen=True)
class EvalRecord:
    """One evaluated sample: its gold labels and the model's completion ("" when generation failed)."""

    sample_id: str
    dataset: str
    gold_aus: tuple[str, ...]
    gold_labels: tuple[str, ...]
    gold_description: str
    completion: str
    error: str | None = None


@dataclass(frozen=True)
class Prediction:
    """What a completion says, as the metrics read it."""

    label: str | None  # the normalised answer; None = missing or empty
    aus: tuple[str, ...]  # canonical AU ids mentioned in the first <think> (the whole completion without one)
    format_ok: bool


@dataclass
class Metrics:
    n: int
    emotion_accuracy: float | None
    emotion_n: int
    au_macro_f1: float | None
    au_micro_f1: float | None
    au_n: int
    per_au_f1: dict[str, float] = field(default_factory=dict)
    rouge_l_f: float | None = None
    rouge_n: int = 0
    format_rate: float | None = None
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------- reading one completion
def gold_label(record: EvalRecord) -> str | None:
    return verifier_gold_label(record.gold_labels) if record.gold_labels else None


def answer_label(completion: str, dataset: str = "") -> str | None:
    """The first label of the last <answer> (split on "," and ";", not on spaces: labels may be
    several words), normalised; None if it is missing or empty. Labels are open, so the dataset's
    label set does not restrict it."""
    answer = parse_completion(completion).answer
    first = re.split(r"[,;\uff0c\uff1b]", answer, maxsplit=1)[0] if answer else ""
    return normalize_label(first)


def predict(record: EvalRecord) -> Prediction:
    parsed = parse_completion(record.completion)
    aus = parsed.think_aus if parsed.think is not None else parsed.all_aus
    return Prediction(answer_label(record.completion, record.dataset), aus, r_format(record.completion) == 1.0)


# ---------------------------------------------------------------- metrics
def emotion_accuracy(records: Sequence[EvalRecord], predictions: Sequence[Prediction]) -> tuple[float | None, int]:
    """-> (accuracy over samples with a gold label, their count); (None, 0) when none has one."""
    pairs = [(gold_label(r), p.label) for r, p in zip(records, predictions, strict=True) if r.gold_labels]
    if not pairs:
        return None, 0
    return sum(gold == pred for gold, pred in pairs) / len(pairs), len(pairs)


def _au_order(au: str) -> tuple[int, str]:
    try:
        return au_number(au), au
    except ValueError:
        return 1 << 30, au


def au_f1(gold: Sequence[Iterable[str]],
          pred: Sequence[Iterable[str]]) -> tuple[float | None, float | None, dict[str, float]]:
    """-> (macro F1 over the AUs present in the gold, micro F1, per-AU F1); Nones for no gold AU."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    gold_sets = [set(g) for g in gold]
    pred_sets = [set(p) for p in pred]
    gold_aus = sorted(set().union(*gold_sets), key=_au_order) if gold_sets else []
    if not gold_aus:
        return None, None, {}
    # Gold AUs first, so columns 0..len(gold_aus)-1 are exactly the AUs macro F1 averages over.
    predicted_only = sorted(set().union(*pred_sets) - set(gold_aus), key=_au_order)
    binarizer = MultiLabelBinarizer(classes=gold_aus + predicted_only)
    y_true, y_pred = binarizer.fit_transform(gold_sets), binarizer.transform(pred_sets)
    # Binary F1 on 0/1 columns: a one-column indicator matrix would be read as a binary target with
    # classes {0, 1} instead of one label. Micro F1 pools every cell, i.e. binary F1 of the flattened matrix.
    per_au_f1 = {au: float(f1_score(y_true[:, j], y_pred[:, j], zero_division=0.0)) for j, au in enumerate(gold_aus)}
    micro = f1_score(y_true.ravel(), y_pred.ravel(), zero_division=0.0)
    return float(sum(per_au_f1.values()) / len(per_au_f1)), float(micro), per_au_f1


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def mean_rouge_l(records: Sequence[EvalRecord]) -> tuple[float | None, int]:
    scored = [rouge_l(r.completion, r.gold_description) for r in records if r.gold_description.strip()]
    return (sum(scored) / len(scored), len(scored)) if scored else (None, 0)


def compute_metrics(records: Sequence[EvalRecord], predictions: Sequence[Prediction] | None = None) -> Metrics:
    predictions = list(predictions) if predictions is not None else [predict(r) for r in records]
    accuracy, emotion_n = emotion_accuracy(records, predictions)
    with_aus = [(present_aus(r.gold_aus), p.aus) for r, p in zip(records, predictions, strict=True) if r.gold_aus]
    macro, micro, per_au = au_f1([g for g, _ in with_aus], [p for _, p in with_aus])
    rouge, rouge_n = mean_rouge_l(records)
    return Metrics(
        n=len(records), emotion_accuracy=accuracy, emotion_n=emotion_n, au_macro_f1=macro, au_micro_f1=micro,
        au_n=len(with_aus), per_au_f1=per_au, rouge_l_f=rouge, rouge_n=rouge_n,
        format_rate=(sum(p.format_ok for p in predictions) / len(predictions)) if predictions else None,
        errors=sum(r.error is not None for r in records))


def per_dataset(records: Sequence[EvalRecord], predictions: Sequence[Prediction]) -> dict[str, Metrics]:
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.dataset, []).append(i)
    return {name: compute_metrics([records[i] for i in idx], [predictions[i] for i in idx])
            for name, idx in sorted(groups.items())}


def confusion(records: Sequence[EvalRecord], predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Gold label x predicted label counts over samples with a gold label; missing or unknown
    answers go to the NO_ANSWER column."""
    pairs = [(gold_label(r), p.label or NO_ANSWER) for r, p in zip(records, predictions, strict=True) if r.gold_labels]
    gold = sorted({g for g, _ in pairs})
    predicted = sorted({p for _, p in pairs} - {NO_ANSWER})
    columns = sorted(set(gold) | set(predicted)) + [NO_ANSWER]
    matrix = [[sum(1 for g, p in pairs if g == row and p == col) for col in columns] for row in gold]
    return {"rows": gold, "columns": columns, "matrix": matrix}
