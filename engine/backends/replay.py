"""Serves completions generated earlier instead of running a model.

Two uses: re-filter stored completions with a new acceptance policy, and measure the pipeline (Ray,
filter, writer) without model time. The store is a JSONL or Parquet file (local or s3://) with
columns sample_id, attempt (0-based, as in GenerationRequest), completion and optionally
completion_tokens, prompt_tokens, finish_reason. Several rows for one key serve n > 1.
A key with no stored completion yields an Attempt whose error says so; it is never skipped.
"""
from __future__ import annotations

import io
import json
from collections import defaultdict

from engine.backends.base import error_attempts
from engine.core.types import Attempt, GenerationRequest, SamplingParams

REQUIRED_COLUMNS = ("sample_id", "attempt", "completion")


class ReplayBackend:
    name = "replay"

    def __init__(self) -> None:
        self.model_id = ""
        self.store: dict[tuple[str, int], list[dict]] = {}

    def load(self, model_dir, adapter, gen_cfg, dtype: str = "auto") -> None:  # no weights: dtype unused
        from engine.data import storage

        if not gen_cfg.replay_path:
            raise ValueError("the replay backend needs generation.replay_path (a JSONL or Parquet file)")
        self.store = load_store(gen_cfg.replay_path)
        self.model_id = f"replay:{storage.basename(gen_cfg.replay_path)}"

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        return [self._serve(req, params.n) for req in requests]

    def _serve(self, req: GenerationRequest, n: int) -> list[Attempt]:
        rows = self.store.get((req.sample_id, req.attempt), [])
        if not rows:
            return error_attempts(req, self.name, self.model_id,
                                  f"replay_missing: no stored completion for ({req.sample_id!r}, {req.attempt})", n)
        served = [rows[k % len(rows)] for k in range(n)]  # fewer stored than n: cycle through them
        return [Attempt(sample_id=req.sample_id, attempt=req.attempt, backend=self.name, model_id=self.model_id,
                        prompt_hash=req.prompt_hash, completion=row["completion"],
                        prompt_tokens=int(row.get("prompt_tokens") or 0),
                        completion_tokens=int(row.get("completion_tokens") or 0),
                        finish_reason=row.get("finish_reason") or "stop") for row in served]

    def close(self) -> None:
        self.store = {}


def load_store(uri: str) -> dict[tuple[str, int], list[dict]]:
    """(sample_id, attempt) -> stored rows, from JSONL or Parquet (chosen by the file suffix)."""
    from engine.data import storage

    data = storage.read_bytes(uri)
    rows = _parquet_rows(data) if uri.endswith(".parquet") else _jsonl_rows(data, uri)
    store: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for number, row in enumerate(rows, 1):
        missing = [c for c in REQUIRED_COLUMNS if row.get(c) is None]
        if missing:
            raise ValueError(f"{storage.redact(uri)} row {number}: missing {', '.join(missing)}")
        store[(str(row["sample_id"]), int(row["attempt"]))].append(row)
    return dict(store)


def _jsonl_rows(data: bytes, uri: str) -> list[dict]:
    from engine.data import storage

    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{storage.redact(uri)} line {number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{storage.redact(uri)} line {number}: expected an object")
        rows.append(row)
    return rows


def _parquet_rows(data: bytes) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pylist()
