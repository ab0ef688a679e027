"""Checks that a shipped YAML means what it says once loaded: every value it writes is the value the
typed config holds (a misspelt, misplaced or overridden key shows up here), and its header's launch
command points at the file itself."""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python


def header(path: Path) -> str:
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines()))


def launches_itself(path: Path) -> bool:
    return f"configs/{path.name}" in header(path)


def unheld_values(config: BaseModel, written: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'dotted.key: file X, config Y' for every value of `written` (a YAML section) that `config` does not hold."""
    found = []
    for key, value in written.items():
        dotted = f"{prefix}{key}"
        if key not in type(config).model_fields:
            found.append(f"{dotted}: not a field of {type(config).__name__}")
            continue
        held = getattr(config, key)
        if isinstance(value, Mapping) and isinstance(held, BaseModel):
            found += unheld_values(held, value, dotted + ".")
        elif not _same(value, to_jsonable_python(held)):
            found.append(f"{dotted}: file {value!r}, config {held!r}")
    return found


def _same(written: Any, held: Any) -> bool:
    if isinstance(written, Mapping):
        return isinstance(held, Mapping) and all(k in held and _same(v, held[k]) for k, v in written.items())
    if isinstance(written, list):
        return isinstance(held, list) and len(written) == len(held) and all(map(_same, written, held))
    if isinstance(written, float) or isinstance(held, float):
        return isinstance(held, (int, float)) and not isinstance(held, bool) and math.isclose(written, held)
    return written == held
