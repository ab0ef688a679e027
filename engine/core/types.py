"""Records that cross stage boundaries: plain frozen dataclasses, no torch/ray/vllm imports.

Data flow: Sample -> (generator) Attempt -> (filter) Verdict -> (writer) ShardRef -> PartitionCommit
-> (trainer) CheckpointRef -> next round's generators.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Sample:
    """One labelled face, in canonical form (FEA-20K fields plus the image itself)."""

    id: str
    dataset: str
    image: bytes  # encoded image file (PNG/JPEG), never a pickled array
    image_sha256: str
    image_path: str  # the original relative path, for provenance and export
    question: str
    aus: tuple[str, ...]  # canonical ids, e.g. ("AU1", "AU4"); () = unknown, ("AU0",) = no AU (facs.NO_AU)
    labels: tuple[str, ...]  # normalised labels (facs.normalize_label); () = unknown (AU-only sources)
    description: str = ""  # reference reasoning (SFT target, ROUGE reference); may be empty
    meta: dict[str, Any] = field(default_factory=dict)
    # What import changed or left out, machine-readable ("au_invalid:smile", "question_default",
    # "id_renamed:<original id>"): a record is kept, and what it lost is said here.
    notes: tuple[str, ...] = ()
    # The answer labels of the record's source, as imported (listed set and the labels the source
    # uses, sorted); () = not known here, the dataset's listed set then applies (facs.label_set_for).
    label_set: tuple[str, ...] = ()

    def gold_label(self) -> str | None:
        return self.labels[0] if self.labels else None


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy, as the paper's synthesis
    top_p: float = 1.0
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    """What a generator backend needs for one prompt: backend-neutral (chat messages, not token ids)."""

    key: str  # "<sample id>#<attempt>", unique within a job
    sample_id: str
    attempt: int
    messages: tuple[dict[str, Any], ...]  # chat messages; the user turn holds {"type": "image"} once
    image: bytes

    @functools.cached_property
    def prompt_hash(self) -> str:
        """Computed where it is first read, in the generator that records it on each Attempt, so that
        the scheduler, which makes every request, does not spend its time on it."""
        return prompt_hash(self.messages)


def prompt_hash(messages: Iterable[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of chat messages; image parts count only as {"type": "image"}, so
    the hash names the prompt, not the picture."""
    without_image_data = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if isinstance(part, dict) and part.get("type") == "image" else part
                       for part in content]
        without_image_data.append({**message, "content": content})
    canonical = json.dumps(without_image_data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_hex(canonical.encode("utf-8"))


@dataclass(frozen=True)
class Attempt:
    """One generated completion for one request (n completions per request give n Attempts)."""

    sample_id: str
    attempt: int
    backend: str
    model_id: str
    prompt_hash: str
    completion: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Scores:
    au: float
    acc: float
    format: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    sample_id: str
    attempt: int
    scores: Scores
    accepted: bool
    reasons: tuple[str, ...]  # machine-readable, e.g. "au_missing:AU4", "label_mismatch", "forbidden_word:not"
    predicted_aus: tuple[str, ...]
    predicted_label: str | None
    policy: str
    verifier_version: str


@dataclass(frozen=True)
class ShardRef:
    uri: str
    format: str  # "webdataset" | "parquet"
    kind: str  # "accepted" | "rejected" | "quarantine"
    rows: int
    sha256: str
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class PartitionCommit:
    """Written last, write-once: a partition's shards are visible only through this record."""

    job_id: str
    partition: int
    sample_ids_sha256: str  # fingerprint of the partition's input ids, so a changed input is detected
    inputs: int
    accepted: int
    rejected: int
    quarantined: int
    attempts_histogram: dict[str, int]  # attempts needed -> count (accepted and rejected)
    generated_tokens: int
    shards: tuple[ShardRef, ...]
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PartitionCommit":
        raw = json.loads(text)
        raw["shards"] = tuple(ShardRef(**s) for s in raw["shards"])
        return cls(**raw)


@dataclass(frozen=True)
class CheckpointRef:
    uri: str  # a folder loadable by transformers and vLLM (merged weights + processor)
    base_model: str
    adapter_uri: str | None
    round: int
    stage: str  # "sft" | "grpo"
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CheckpointRef":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class QuarantineRecord:
    """An input that could not be used, with the reason; every input ends accepted, rejected or here."""

    source: str  # file or URI the record came from
    line: int  # 1-based line number for JSONL input, row index for Parquet, -1 when unknown
    sample_id: str | None
    reason: str  # machine-readable head, e.g. "image_missing: faces/0001.png"
    raw: str = ""  # the offending input text (truncated), never secrets
