"""`fea score`: verify the completions in an FEA-20K JSONL file, one output line per input line.

Each input line is an FEA-20K record plus a `completion` string; its output line is the same record
plus `rewards` {au, acc, format, total}, `accepted` and `reasons`. A line that cannot be scored
(bad JSON, no completion, AUs or labels of the wrong shape, an unknown AU id or label) becomes
{..., "line": N, "error": "..."} and scoring goes on, so every non-blank input line is accounted
for exactly once. Blank lines carry no record and are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.config import VerifierConfig
from engine.core.facs import label_set_for, normalize_aus, normalize_emotion
from engine.core.verifier import verify

_RAW_SHOWN = 200  # characters of an unparsable line kept in its error record


class RecordError(ValueError):
    """A record that cannot be scored; the message is the stable error text."""


def _gold(record: dict[str, Any]) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...] | None]:
    """-> (completion, canonical gold AUs, canonical gold labels, dataset label set or None)."""
    completion = record.get("completion")
    if not isinstance(completion, str):
        raise RecordError("completion: missing or not a string")
    aus = record.get("AUs", [])
    if not isinstance(aus, list) or not all(isinstance(a, str) for a in aus):
        raise RecordError("AUs: not a list of strings")
    gold_aus, unknown = normalize_aus(aus)
    if unknown:
        raise RecordError(f"AUs: unknown AU id(s) {', '.join(unknown)}")
    labels = record.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise RecordError("labels: not a list of strings")
    dataset = record.get("dataset")
    label_set = label_set_for(dataset) if isinstance(dataset, str) else None
    gold_labels = []
    for label in labels:
        noun = normalize_emotion(label, label_set or None)
        if noun is None:
            raise RecordError(f"labels: {label!r} is not an emotion label of dataset {dataset!r}")
        gold_labels.append(noun)
    return completion, gold_aus, tuple(gold_labels), label_set


def score_record(record: Any, cfg: VerifierConfig) -> dict[str, Any]:
    """One parsed JSON value -> its output record (raises RecordError when it cannot be scored)."""
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    completion, gold_aus, gold_labels, label_set = _gold(record)
    sample_id = record.get("id")
    verdict = verify(completion, gold_aus, gold_labels, cfg, sample_id=sample_id if isinstance(sample_id, str) else "",
                     label_set=label_set or None)
    return {**record, "rewards": verdict.scores.as_dict(), "accepted": verdict.accepted,
            "reasons": list(verdict.reasons)}


def _score_line(text: str, number: int, cfg: VerifierConfig) -> tuple[dict[str, Any], bool]:
    """-> (output record, scored?)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return {"line": number, "error": f"bad JSON: {err.msg} at column {err.colno}",
                "raw": text.rstrip("\n")[:_RAW_SHOWN]}, False
    try:
        return score_record(record, cfg), True
    except RecordError as err:
        base = record if isinstance(record, dict) else {"raw": text.rstrip("\n")[:_RAW_SHOWN]}
        return {**base, "line": number, "error": str(err)}, False


def score_jsonl(in_path: str | Path, out_path: str | Path, policy: str = "strict",
                cfg: VerifierConfig | None = None) -> dict[str, int]:
    """Score every line of `in_path` into `out_path`; -> {lines, scored, accepted, errors}.

    `cfg` sets weights and strict-policy rules; `policy` overrides its policy.
    """
    # Validated (an unknown policy fails here, before any output is written).
    cfg = VerifierConfig.model_validate({**(cfg or VerifierConfig()).model_dump(), "policy": policy})
    summary = {"lines": 0, "scored": 0, "accepted": 0, "errors": 0}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(in_path, encoding="utf-8", errors="replace") as src, open(out, "w", encoding="utf-8") as dst:
        for number, text in enumerate(src, start=1):
            if not text.strip():
                continue
            summary["lines"] += 1
            result, scored = _score_line(text, number, cfg)
            if scored:
                summary["scored"] += 1
                summary["accepted"] += int(result["accepted"])
            else:
                summary["errors"] += 1
            dst.write(json.dumps(result, ensure_ascii=False) + "\n")
    return summary
