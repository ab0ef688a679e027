"""`fea score`: verify the completions in an FEA-20K JSONL file, one output line per input line.

Each input line is an FEA-20K record plus a `completion` string; its output line is the same record
plus `rewards` {au, acc, format, total}, `accepted` and `reasons`. An empty (or absent) AUs list
means the AUs are unknown, an empty labels list that the emotion is unknown: that check is skipped
(R_AU 0, R_acc 0.5); ["AU0"] says the face shows no AU. A gold AU that is no FACS id is left out of
the gold set and reported in `reasons` as "gold_au_invalid:<token>", without rejecting the line;
labels are open (normalised, any word). A line that cannot be scored (bad JSON, no completion, AUs
or labels of the wrong shape) becomes {..., "line": N, "error": "..."} and scoring goes on, so every
non-blank input line is accounted for exactly once. Blank lines carry no record and are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.config import VerifierConfig
from engine.core.facs import label_set_for, normalize_aus, normalize_label
from engine.core.verifier import verify

_RAW_SHOWN = 200  # characters of an unparsable line kept in its error record


class RecordError(ValueError):
    """A record that cannot be scored; the message is the stable error text."""


def _gold(record: dict[str, Any]) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...] | None,
                                          tuple[str, ...]]:
    """-> (completion, canonical gold AUs, normalised gold labels, dataset label set or None, gold AU
    tokens that are no FACS id)."""
    completion = record.get("completion")
    if not isinstance(completion, str):
        raise RecordError("completion: missing or not a string")
    aus = record.get("AUs") or []
    if not isinstance(aus, list) or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in aus):
        raise RecordError("AUs: not a list of strings")
    gold_aus, invalid = normalize_aus([str(a) for a in aus])
    labels = record.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise RecordError("labels: not a list of strings")
    dataset = record.get("dataset")
    label_set = label_set_for(dataset) if isinstance(dataset, str) else None
    gold_labels = tuple(dict.fromkeys(n for n in map(normalize_label, labels) if n is not None))
    return completion, gold_aus, gold_labels, label_set, invalid


def score_record(record: Any, cfg: VerifierConfig) -> dict[str, Any]:
    """One parsed JSON value -> its output record (raises RecordError when it cannot be scored)."""
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    completion, gold_aus, gold_labels, label_set, invalid = _gold(record)
    sample_id = record.get("id")
    verdict = verify(completion, gold_aus, gold_labels, cfg, sample_id=sample_id if isinstance(sample_id, str) else "",
                     label_set=label_set or None)
    return {**record, "rewards": verdict.scores.as_dict(), "accepted": verdict.accepted,
            "reasons": list(verdict.reasons) + [f"gold_au_invalid:{token}" for token in invalid]}


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
