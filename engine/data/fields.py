"""The field rules of an FEA-20K record: types and defaults, and how question, AUs and labels are
normalised. What the official code accepts is kept: a null question gets the official default, null
AU and label lists are unknown, a label may lie outside the eight emotions, and an AU token that is
no FACS code is left out with a note instead of costing the record (engine.data.dataset applies them).
"""
from __future__ import annotations

from typing import Any

from engine.core import facs

# The official scripts' question when a record has none (src/eval/infer_emotion.py, grpo_jsonl.py).
DEFAULT_QUESTION = "What is the emotion of this face?"


class InvalidRecord(Exception):
    """Why a record cannot be used; `reason` is '<code>' or '<code>: <detail>'."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def typed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The record's fields with their types checked; optional ones defaulted."""
    expected = {"id": str, "dataset": str, "image": str, "question": str, "AUs": list, "labels": list,
                "description": str, "meta_info": dict, "is_valid": bool}
    defaults = {"description": "", "meta_info": {}, "is_valid": True, "question": "", "AUs": [], "labels": []}
    fields = {}
    for name, kind in expected.items():
        value = obj.get(name)
        if value is None and name in defaults:
            value = defaults[name]
        if not isinstance(value, kind):
            raise InvalidRecord(f"bad_field:{name}: expected {kind.__name__}, got {type(value).__name__}")
        fields[name] = value
    for name in ("id", "image"):
        if not fields[name].strip():
            raise InvalidRecord(f"missing_field:{name}")
    return fields


def normalize_labels(words: list[Any]) -> tuple[tuple[str, ...], list[str]]:
    """Open label sets: every label is kept, normalised (facs.normalize_label); -> (labels, notes).
    A label that is not text is malformed; an empty one is left out with a note."""
    labels: list[str] = []
    notes: list[str] = []
    for word in words:
        if not isinstance(word, str):
            raise InvalidRecord(f"bad_label:{word!r}")
        label = facs.normalize_label(word)
        if label is None:
            notes.append(f"label_empty:{word!r}")
        elif label not in labels:
            labels.append(label)
    return tuple(labels), notes


def normalize_aus(tokens: list[Any]) -> tuple[tuple[str, ...], list[str]]:
    """Gold AU tokens -> (canonical ids, notes). Bare integers (4, 12) are AU numbers in some
    sources. A token that is no FACS id is left out and named in a note ("au_invalid:smile"); it
    never costs the record. If nothing valid is left, the AUs are unknown (an empty list)."""
    texts: list[str] = []
    notes: list[str] = []
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, (str, int)):
            notes.append(f"au_invalid:{token!r}")
        else:
            texts.append(str(token))
    aus, unknown = facs.normalize_aus(texts)
    return aus, notes + [f"au_invalid:{token}" for token in unknown]


def clean_question(question: str) -> tuple[str, list[str]]:
    """The official scripts' handling: "<image>" removed, stripped, DEFAULT_QUESTION when empty."""
    cleaned = question.replace("<image>", "").strip()
    return (cleaned, []) if cleaned else (DEFAULT_QUESTION, ["question_default"])


def previous_notes(obj: dict[str, Any]) -> list[str]:
    """Notes a stored row already carries (a canonical dataset read again keeps them)."""
    notes = obj.get("notes")
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
