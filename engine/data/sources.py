"""Many sources in one import: `fea import --manifest sources.yaml --out URI`.

FEA-20K ships as one JSONL per source (JAFFE, RAF-DB, DISFA, BP4D-gpt, ...), each with its own image
folder. A manifest lists them:

    sources:
      - name: raf-db
        jsonl: data/RAF-DB-Train.jsonl
        image_root: data/RAF-DB-Train
      - name: disfa
        jsonl: data/DISFA-Train.jsonl
        image_root: data/DISFA-Train
        dataset: DISFA              # optional: overrides every record's `dataset`
        labels: []                  # optional: the source's answer labels (default: scanned)

Paths are relative to the manifest's folder unless absolute or s3://. Ids that occur in more than
one source are made unique per source as "<name>/<id>" (every occurrence, so no source keeps a
claim the others lose); the mapping is kept in OUT/id_map.parquet (source, original_id, id) and in
each renamed sample's notes ("id_renamed:<original>"). A repeat inside one source stays a
duplicate_id quarantine. The summary counts by source and by reason.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.core.types import QuarantineRecord, Sample
from engine.data import shards, storage
from engine.data.dataset import (DEFAULT_ROWS_PER_PART, RecordValidator, _iter_lines, image_loader, reason_code,
                                 scan_label_sets, write_samples)

ID_MAP_SCHEMA = pa.schema([pa.field("source", pa.string()), pa.field("original_id", pa.string()),
                           pa.field("id", pa.string())])


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, description="Short source name; prefixes ids that collide.")
    jsonl: str = Field(..., description="The source's FEA-20K JSONL (local or s3://).")
    image_root: str = Field(..., description="The folder its `image` paths are relative to.")
    dataset: str | None = Field(None, description="Overrides every record's `dataset` field.")
    labels: tuple[str, ...] | None = Field(None, description="The source's answer labels (default: scanned).")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[SourceSpec, ...] = Field(..., min_length=1)


def load_manifest(path: str | Path) -> Manifest:
    """The manifest at `path` (local or s3://), its relative paths resolved against its folder;
    ValueError names the rule."""
    path = str(path)
    try:
        manifest = Manifest.model_validate(yaml.safe_load(storage.read_text(path)) or {})
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ValueError(f"invalid manifest {storage.redact(path)}:\n  " + "\n  ".join(lines)) from None
    names = [s.name for s in manifest.sources]
    if len(set(names)) != len(names):
        raise ValueError(f"{storage.redact(path)}: source names must be unique, got {names}")
    base = storage.parent(path) if storage.is_s3(path) else str(Path(path).resolve().parent)

    def resolved(value: str) -> str:
        return value if storage.is_s3(value) or Path(value).is_absolute() else storage.join(base, value)

    return Manifest(sources=tuple(s.model_copy(update={"jsonl": resolved(s.jsonl), "image_root": resolved(s.image_root)})
                                  for s in manifest.sources))


def _ids(uri: str) -> set[str]:
    found = set()
    for _, text in _iter_lines(uri):
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            found.add(obj["id"])
    return found


def id_renames(manifest: Manifest) -> tuple[set[str], list[dict[str, str]]]:
    """-> (ids that occur in more than one source, the rename of each of their occurrences)."""
    per_source = {source.name: _ids(source.jsonl) for source in manifest.sources}
    count = Counter(sample_id for ids in per_source.values() for sample_id in ids)
    collisions = {sample_id for sample_id, n in count.items() if n > 1}
    renames = [{"source": name, "original_id": sample_id, "id": f"{name}/{sample_id}"}
               for name, ids in per_source.items() for sample_id in sorted(ids & collisions)]
    return collisions, renames


def iter_source(source: SourceSpec, collisions: set[str]) -> Iterator[Sample | QuarantineRecord]:
    """One source's records, with its dataset override, label set and collision renames applied."""
    label_sets = scan_label_sets(source.jsonl, source.dataset)
    if source.labels is not None:
        label_sets = {name: tuple(sorted(source.labels)) for name in label_sets} or {
            source.dataset or source.name: tuple(sorted(source.labels))}
    validator = RecordValidator(source=source.jsonl, label_sets=label_sets)
    load_image = image_loader(source.image_root)
    for number, text in _iter_lines(source.jsonl):
        try:
            obj = json.loads(text)
        except ValueError as err:
            yield validator.quarantine(number, f"bad_json: {err}", text)
            continue
        original = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(obj, dict) and source.dataset:
            obj = {**obj, "dataset": source.dataset}
        if isinstance(original, str) and original in collisions:
            obj = {**obj, "id": f"{source.name}/{original}"}
        item = validator.from_record(obj, number, text, load_image)
        if isinstance(item, Sample) and item.id != original:
            item = dataclasses.replace(item, notes=item.notes + (f"id_renamed:{original}",))
        yield item


def _counted(name: str, items: Iterator[Sample | QuarantineRecord], counts: dict[str, Any]) -> Iterator[Sample | QuarantineRecord]:
    tally = counts.setdefault(name, {"read": 0, "imported": 0, "quarantined": 0, "by_reason": {}})
    for item in items:
        tally["read"] += 1
        if isinstance(item, Sample):
            tally["imported"] += 1
        else:
            tally["quarantined"] += 1
            code = reason_code(item.reason)
            tally["by_reason"][code] = tally["by_reason"].get(code, 0) + 1
        yield item


def import_manifest(manifest_path: str | Path, out_uri: str, rows_per_part: int = DEFAULT_ROWS_PER_PART) -> dict[str, Any]:
    """Every source of the manifest -> one canonical dataset at OUT (see the module docstring)."""
    manifest = load_manifest(manifest_path)
    out_uri = str(out_uri).rstrip("/")
    collisions, renames = id_renames(manifest)
    # Written before the samples: write_samples' summary.json is the dataset's commit marker.
    shards.write_parquet(storage.join(out_uri, "id_map.parquet"), renames, ID_MAP_SCHEMA)
    by_source: dict[str, Any] = {}

    def items() -> Iterator[Sample | QuarantineRecord]:
        for source in manifest.sources:
            yield from _counted(source.name, iter_source(source, collisions), by_source)

    # by_source fills while write_samples reads the items, and the summary is built after the last one.
    return write_samples(items(), out_uri, rows_per_part, manifest=str(manifest_path),
                         sources=[s.name for s in manifest.sources], by_source=by_source,
                         renamed_ids=len(renames), id_map="id_map.parquet")
