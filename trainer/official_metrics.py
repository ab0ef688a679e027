"""The official evaluation's metrics (RobitsG/Facial-R1: src/eval/eval_qwen.py with
src/open-r1-multimodal/src/open_r1/utils/eval_utils.py), reimplemented rule for rule so that
figures compare with the paper's tables:

- predicted AUs: `AU\\d+` (case-sensitive, unnormalised) in the first <think>...</think>, or in the
  whole output when there is none (extract_au_pred_think);
- predicted labels: the first <answer>...</answer> stripped (the whole output when there is none),
  split on "," ";" "，" "；" and whitespace (extract_label_pred_answer);
- accuracy: the first predicted label equals the first gold label (multilabel_metrics, mode label);
- AU metrics: classes are the AUs in the gold data; a record is a 0/1 row over them (predictions
  outside the classes are ignored); per-class F1/recall/accuracy, macro = their mean over classes
  with gold positives, micro F1/recall pooled over the classes, micro accuracy = exact-row match;
- ROUGE-1/2/L F (rouge-score, stemmer on) of the output against the gold description, averaged over
  every record.

Unknown is not absent: accuracy is computed over the records with labels and the AU metrics over
the records whose AUs are known (the official scripts evaluate one source at a time, where that
holds for every record). A record with the explicit no-AU form (NO_AU) is a known all-zero row. An
empty prediction counts as wrong (the official code would stop with an IndexError).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from engine.core.facs import NO_AU

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LABEL_SPLIT = re.compile(r"[,;\uff0c\uff1b\s]+")
_AU = re.compile(r"AU\d+")


def extract_au_pred_think(output: str) -> list[str]:
    match = _THINK.search(output)
    # the official key is the number alone; ties ("AU04", "AU4") are ordered by text here, so runs agree
    return sorted(set(_AU.findall(match.group(1) if match else output)), key=lambda au: (int(au[2:]), au))


def extract_label_pred_answer(output: str) -> list[str]:
    match = _ANSWER.search(output)
    answer = match.group(1).strip() if match else output
    return [part.strip() for part in _LABEL_SPLIT.split(answer) if part.strip()]


def label_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Accuracy of the first predicted label against the first gold label, and per gold class."""
    classes = sorted({g for labels in gold for g in labels})
    totals = dict.fromkeys(classes, 0)
    hits = dict.fromkeys(classes, 0)
    for gold_labels, pred_labels in zip(gold, pred, strict=True):
        first = gold_labels[0]
        totals[first] += 1
        hits[first] += int(bool(pred_labels) and pred_labels[0] == first)
    n = len(gold)
    return {"accuracy": sum(hits.values()) / n if n else None, "n": n,
            "per_class": {c: {"acc": hits[c] / totals[c] if totals[c] else 0.0, "has_positive": totals[c] > 0}
                          for c in classes}}


def _ratio(top: int, bottom: int) -> float:
    return top / bottom if bottom else 0.0


def au_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """multilabel_metrics(mode='au') over the gold AU classes."""
    classes = sorted({au for aus in gold for au in aus}, key=lambda au: int(au[2:]) if au[2:].isdigit() else 999)
    rows = [(set(g) & set(classes), set(p) & set(classes)) for g, p in zip(gold, pred, strict=True)]
    n = len(rows)
    per_class: dict[str, dict[str, Any]] = {}
    pooled = [0, 0, 0]  # tp, fp, fn
    for au in classes:
        tp = sum(au in g and au in p for g, p in rows)
        fp = sum(au not in g and au in p for g, p in rows)
        fn = sum(au in g and au not in p for g, p in rows)
        pooled = [pooled[0] + tp, pooled[1] + fp, pooled[2] + fn]
        per_class[au] = {"acc": _ratio(n - fp - fn, n), "recall": _ratio(tp, tp + fn),
                         "f1": _ratio(2 * tp, 2 * tp + fp + fn), "has_positive": tp + fn > 0}
    positive = [m for m in per_class.values() if m["has_positive"]]

    def mean(key: str) -> float | None:
        return sum(m[key] for m in positive) / len(positive) if positive else None

    tp, fp, fn = pooled
    return {"n": n, "macro": {"accuracy": mean("acc"), "recall": mean("recall"), "f1": mean("f1")},
            "micro": {"accuracy": _ratio(sum(g == p for g, p in rows), n) if classes else None,
                      "recall": _ratio(tp, tp + fn) if classes else None,
                      "f1": _ratio(2 * tp, 2 * tp + fp + fn) if classes else None},
            "per_class": per_class}


def rouge_scores(outputs: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    from rouge_score import rouge_scorer

    if not outputs:
        return {"rouge1": None, "rouge2": None, "rougeL": None}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, out) for out, ref in zip(outputs, references, strict=True)]
    return {name: sum(s[name].fmeasure for s in scores) / len(scores) for name in ("rouge1", "rouge2", "rougeL")}


def official_metrics(records: Sequence[Any]) -> dict[str, Any]:
    """The official figures for records with gold_aus, gold_labels, gold_description and completion
    (trainer.metrics.EvalRecord)."""
    labelled = [r for r in records if r.gold_labels]
    labels = label_metrics([list(r.gold_labels) for r in labelled],
                           [extract_label_pred_answer(r.completion) for r in labelled])
    with_aus = [r for r in records if r.gold_aus]
    aus = au_metrics([[au for au in r.gold_aus if au != NO_AU] for r in with_aus],
                     [extract_au_pred_think(r.completion) for r in with_aus])
    rouge = rouge_scores([r.completion for r in records], [r.gold_description for r in records])
    return {"emotion_accuracy": labels["accuracy"], "emotion_n": labels["n"],
            "au_macro_f1": aus["macro"]["f1"], "au_micro_f1": aus["micro"]["f1"], "au_n": aus["n"],
            "per_au_f1": {au: m["f1"] for au, m in aus["per_class"].items()},
            "rouge_l_f": rouge["rougeL"], "rouge": rouge, "n": len(records),
            "label_metrics": labels, "au_metrics": aus}
