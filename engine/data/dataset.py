"""FEA-20K data in and out: import to the canonical Parquet form, read any input, export committed output.

Inputs the engine understands (detected by `input_kind`):
- FEA-20K JSONL (one record a line, images relative to an image root),
- a canonical dataset folder written by `import_fea20k` (OUT/samples/*.parquet, OUT/quarantine.parquet,
  OUT/summary.json),
- a synthesis output (OUT/commits/*.json name the committed shards; nothing else is read),
- a single Parquet file with the sample columns.

The rules that decide whether a record is usable live in one place, `RecordValidator`; importing,
loading synthesis input and reading training data all go through it, so a record is judged the
same way everywhere. A record that cannot be used becomes a QuarantineRecord whose reason starts
with a machine-readable code (see `reason_code`); nothing is dropped without a record.
"""
from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from engine.core import facs
from engine.data.commits import commits_dir, committed_shard_uris
from engine.data import retry, shards, storage
from engine.data.fields import (  # noqa: F401  (InvalidRecord, DEFAULT_QUESTION: part of this module's surface)
    DEFAULT_QUESTION, InvalidRecord, clean_question, normalize_aus, normalize_labels, previous_notes, typed_fields)
from engine.data.png import png_complete, png_size
from engine.core.types import SCHEMA_VERSION, QuarantineRecord, Sample, sha256_hex

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "dataset", "image")
RAW_LIMIT = 2000  # characters of the offending input kept in a quarantine record
DEFAULT_ROWS_PER_PART = 512




def reason_code(reason: str) -> str:
    """The machine-readable head of a quarantine reason ('image_missing: a.png' -> 'image_missing')."""
    return reason.split(": ", 1)[0]


# ---------------------------------------------------------------- images
def check_image(data: bytes) -> None:
    """Raise InvalidRecord('image_undecodable: ...') unless `data` is a complete, decodable image.

    Common PNGs are checked without decoding their pixels (`engine.data.png`); anything else is decoded."""
    complete = png_complete(data)
    if complete is not None:
        if not complete:
            raise InvalidRecord("image_undecodable: PNG cut short or damaged (chunk, checksum or image data)")
        return
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # verify() does not decode the pixels; truncated data only fails here
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise InvalidRecord(f"image_undecodable: {type(err).__name__}: {err}"[:300]) from None


def check_image_header(data: bytes) -> None:
    """The cheap check for images already fully checked once (see `_iter_sample_rows`): PIL must
    recognise the format and read a non-empty size from the header; the pixels are not decoded.
    A PNG's size is read straight from its header (PIL's open costs about 20 us a face)."""
    size = png_size(data)
    if size is not None:
        if not all(size):
            raise InvalidRecord(f"image_undecodable: image size {size}")
        return
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width <= 0 or im.height <= 0:
                raise ValueError(f"image size {im.size}")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise InvalidRecord(f"image_undecodable: {type(err).__name__}: {err}"[:300]) from None


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:  # plain open: an fsspec call per image costs more than the read
        return f.read()


def image_loader(image_root: str) -> Callable[[str], bytes]:
    """A function relative path -> image bytes, refusing any path that leaves `image_root`."""
    root = str(image_root)
    read = storage.read_bytes if storage.is_s3(root) else _read_local
    if storage.is_s3(root):
        root_key = posixpath.normpath(root[len(storage.S3_SCHEME):].rstrip("/"))

        def resolve(rel: str) -> str:
            key = posixpath.normpath(posixpath.join(root_key, rel))
            if rel.startswith("/") or not key.startswith(root_key + "/"):
                raise InvalidRecord(f"image_outside_root: {rel}")
            return storage.S3_SCHEME + key
    else:
        root_real = os.path.realpath(root)

        def resolve(rel: str) -> str:
            # realpath also follows symlinks, so a link pointing out of the root is refused too.
            path = os.path.realpath(os.path.join(root_real, rel))
            if os.path.isabs(rel) or os.path.commonpath([root_real, path]) != root_real or path == root_real:
                raise InvalidRecord(f"image_outside_root: {rel}")
            return path

    def load(rel: str) -> bytes:
        if "\x00" in rel or "://" in rel:
            raise InvalidRecord(f"image_outside_root: {rel!r}")
        uri = resolve(rel)
        try:
            return read(uri)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise InvalidRecord(f"image_missing: {rel}") from None
        except PermissionError as err:
            raise InvalidRecord(f"image_missing: {rel} ({type(err).__name__})") from None

    return load


# ---------------------------------------------------------------- the validation rules
@dataclass
class RecordValidator:
    """Turns FEA-20K-shaped records into Samples or QuarantineRecords; remembers ids to catch duplicates.

    The first occurrence of an id claims it, whatever happens to that record afterwards, so a later
    record can never silently stand in for an earlier one.
    """

    source: str
    seen_ids: set[str] = field(default_factory=set)
    # False for images whose bytes were fully checked (`check_image`) when they were first stored
    # (their sha256 is checked instead): only the header is checked again. The full check is most of
    # a record's cost.
    full_image_check: bool = True
    # Per dataset name: the source's answer labels (see `scan_label_sets`); stored rows carry their own.
    label_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def quarantine(self, line: int, reason: str, raw: str | Callable[[], str],
                   sample_id: str | None = None) -> QuarantineRecord:
        """`raw`: the record's text, or a function that makes it (a stored row is summarised as text
        only when it is quarantined: most rows never are, and the summary costs as much as the checks)."""
        text = raw() if callable(raw) else raw
        return QuarantineRecord(source=storage.redact(self.source), line=line, sample_id=sample_id,
                                reason=reason, raw=text[:RAW_LIMIT])

    def from_json_line(self, text: str, line: int, load_image: Callable[[str], bytes]) -> Sample | QuarantineRecord:
        try:
            obj = json.loads(text)
        except ValueError as err:
            return self.quarantine(line, f"bad_json: {err}", text)
        return self.from_record(obj, line, text, load_image)

    def from_record(self, obj: Any, line: int, raw: str | Callable[[], str], load_image: Callable[[str], bytes],
                    expected_sha256: str | None = None) -> Sample | QuarantineRecord:
        sample_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        try:
            sample = self._build(obj, load_image, expected_sha256)
        except InvalidRecord as bad:
            return self.quarantine(line, bad.reason, raw, sample_id)
        return sample

    def _build(self, obj: Any, load_image: Callable[[str], bytes], expected_sha256: str | None) -> Sample:
        if not isinstance(obj, dict):
            raise InvalidRecord(f"not_object: {type(obj).__name__}")
        for name in REQUIRED_FIELDS:
            if obj.get(name) is None:
                raise InvalidRecord(f"missing_field:{name}")
        fields = typed_fields(obj)
        if fields["id"] in self.seen_ids:
            raise InvalidRecord("duplicate_id")
        self.seen_ids.add(fields["id"])
        if fields["is_valid"] is False:
            raise InvalidRecord("is_valid_false")
        labels, label_notes = normalize_labels(fields["labels"])
        aus, au_notes = normalize_aus(fields["AUs"])
        question, question_notes = clean_question(fields["question"])
        image = load_image(fields["image"])
        digest = sha256_hex(image)
        if expected_sha256 is not None and digest != expected_sha256:
            raise InvalidRecord("image_sha256_mismatch")
        if self.full_image_check or expected_sha256 is None:
            check_image(image)
        else:
            check_image_header(image)
        return Sample(id=fields["id"], dataset=fields["dataset"], image=image, image_sha256=digest,
                      image_path=fields["image"], question=question, aus=aus, labels=labels,
                      description=fields["description"], meta=fields["meta_info"],
                      notes=tuple(dict.fromkeys(previous_notes(obj) + question_notes + au_notes + label_notes)),
                      label_set=self._label_set(obj, fields["dataset"], labels))

    def _label_set(self, obj: dict[str, Any], dataset: str, labels: tuple[str, ...]) -> tuple[str, ...]:
        stored = obj.get("label_set")
        if isinstance(stored, list) and stored:
            return tuple(str(label) for label in stored)
        if dataset not in self.label_sets:
            return ()
        known = self.label_sets[dataset]
        return known if set(labels) <= set(known) else tuple(sorted(set(known) | set(labels)))


# ---------------------------------------------------------------- readers
def _iter_lines(uri: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for every non-blank line; undecodable bytes become U+FFFD (then bad_json).
    On S3, a transient fault mid-file reopens it and goes on after the lines already given."""
    return retry.resumed_on_s3(uri, lambda skip: _lines(uri, skip))


def _lines(uri: str, skip: int) -> Iterator[tuple[int, str]]:
    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as f:
        numbered = ((number, raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                    for number, raw in enumerate(f, start=1))
        yield from itertools.islice(((number, text) for number, text in numbered if text.strip()), skip, None)


def scan_label_sets(uri: str, dataset: str | None = None) -> dict[str, tuple[str, ...]]:
    """Per dataset name in an FEA-20K JSONL file: its answer labels, i.e. the dataset's listed set
    (facs.label_set_for) with every normalised label its valid records use, sorted (the order of the
    official per-source tables). Reads only the text; `dataset` overrides each record's name."""
    used: dict[str, set[str]] = {}
    for _, text in _iter_lines(uri):
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("is_valid") is False:
            continue
        name = dataset or obj.get("dataset")
        labels = obj.get("labels")
        if isinstance(name, str) and isinstance(labels, list):
            used.setdefault(name, set()).update(
                n for n in (facs.normalize_label(w) for w in labels if isinstance(w, str)) if n)
    return {name: tuple(sorted(set(facs.label_set_for(name) or ()) | found)) for name, found in used.items()}


def iter_jsonl(uri: str, image_root: str | None = None) -> Iterator[Sample | QuarantineRecord]:
    """Every non-blank line of an FEA-20K JSONL file as a Sample or a QuarantineRecord."""
    uri = str(uri)
    validator = RecordValidator(source=uri, label_sets=scan_label_sets(uri))
    load_image = image_loader(str(image_root) if image_root is not None else storage.parent(uri))
    for number, text in _iter_lines(uri):
        yield validator.from_json_line(text, number, load_image)


def _iter_sample_rows(part_uris: list[str], full_image_check: bool = True) -> Iterator[Sample | QuarantineRecord]:
    """Stored sample rows, re-checked with the same rules (a damaged shard yields quarantine, not garbage).

    `full_image_check=False` is for shards this engine wrote from validated samples (a canonical
    dataset, committed synthesis output): every image was fully checked when it was stored, so matching
    its stored sha256 and reading its header is enough."""
    seen_ids: set[str] = set()  # one id space over every part: a repeat in a later part is a duplicate too
    for part in part_uris:
        validator = RecordValidator(source=part, seen_ids=seen_ids, full_image_check=full_image_check)
        for index, row in enumerate(shards.iter_parquet_rows(part)):
            try:
                record = shards.fea20k_record(row)
                record["notes"] = list(row.get("notes") or ())
                record["label_set"] = list(row.get("label_set") or ())
            except (ValueError, TypeError, KeyError) as err:
                yield validator.quarantine(index, f"bad_row: {err}", _row_summary(row), row.get("id"))
                continue
            image = row.get("image")
            load = (lambda _rel, data=image: bytes(data)) if image is not None else _missing_image
            yield validator.from_record(record, index, functools.partial(_row_summary, row), load,
                                        expected_sha256=row.get("image_sha256"))


def _missing_image(rel: str) -> bytes:
    raise InvalidRecord(f"image_missing: {rel}")


def _row_summary(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "image"}, default=str)[:RAW_LIMIT]


def input_kind(uri: str) -> str:
    """'jsonl' | 'parquet' | 'synthesis' | 'canonical' for an input URI; ValueError when it is none of them."""
    text = str(uri).rstrip("/")
    if text.endswith((".jsonl", ".json")):
        return "jsonl"
    if text.endswith(".parquet"):
        return "parquet"
    if storage.exists(storage.join(text, "job.json")) or storage.list_files(commits_dir(text), ".json"):
        return "synthesis"
    samples_dir = storage.join(text, "samples")
    if storage.exists(storage.join(text, "summary.json")) or storage.list_files(samples_dir, ".parquet"):
        return "canonical"
    raise ValueError(f"{storage.redact(text)}: not an FEA-20K JSONL file, a Parquet file, a canonical dataset "
                     "(samples/*.parquet) or a synthesis output (commits/*.json)")


def canonical_parts(uri: str) -> list[str]:
    """The sample shards of a canonical dataset: those its summary.json lists, else samples/*.parquet."""
    summary_uri = storage.join(uri, "summary.json")
    if storage.exists(summary_uri):
        summary = json.loads(storage.read_text(summary_uri))
        if "parts" in summary:
            return [storage.join(uri, part["path"]) for part in summary["parts"]]
    return storage.list_files(storage.join(uri, "samples"), suffix=".parquet")


def load_input(uri: str, image_root: str | None = None) -> Iterator[Sample | QuarantineRecord]:
    """Every input record as a Sample or a QuarantineRecord, whatever form the input has.

    JSONL images are read relative to `image_root` (default: the JSONL file's folder). A synthesis
    output contributes its committed accepted samples.
    """
    uri = str(uri)
    kind = input_kind(uri)
    if kind == "jsonl":
        return iter_jsonl(uri, image_root)
    if kind == "parquet":
        return _iter_sample_rows([uri])
    if kind == "synthesis":
        return _iter_sample_rows(committed_shard_uris(uri, "accepted", "parquet"), full_image_check=False)
    return _iter_sample_rows(canonical_parts(uri), full_image_check=False)


def iter_samples(uri: str, image_root: str | None = None) -> Iterator[Sample]:
    """The usable samples of any input (see `load_input`); unusable records are counted in a warning."""
    skipped: Counter[str] = Counter()
    for item in load_input(uri, image_root):
        if isinstance(item, Sample):
            yield item
        else:
            skipped[reason_code(item.reason)] += 1
    if skipped:
        log.warning("%s: skipped %d unusable records %s", storage.redact(uri), sum(skipped.values()), dict(skipped))


# ---------------------------------------------------------------- import
class _PartWriter:
    """Buffers sample rows and writes OUT/samples/part-NNNNN.parquet every `rows_per_part` rows."""

    def __init__(self, out_uri: str, rows_per_part: int):
        self.out_uri, self.rows_per_part = out_uri, rows_per_part
        self.rows: list[dict[str, Any]] = []
        self.parts: list[dict[str, Any]] = []

    def add(self, sample: Sample) -> None:
        self.rows.append(shards.sample_to_row(sample))
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        rel = f"samples/part-{len(self.parts):05d}.parquet"
        ref = shards.write_parquet(storage.join(self.out_uri, rel), self.rows, shards.SAMPLE_SCHEMA)
        self.parts.append({"path": rel, "rows": ref.rows, "sha256": ref.sha256})
        self.rows = []

    def close(self) -> list[dict[str, Any]]:
        if self.rows or not self.parts:  # an empty import still gets one (empty) part to read
            self.flush()
        return self.parts


def write_samples(items: Iterable[Sample | QuarantineRecord], out_uri: str,
                  rows_per_part: int = DEFAULT_ROWS_PER_PART, **about: Any) -> dict[str, Any]:
    """Samples (and quarantine records) -> a canonical dataset: OUT/samples/part-*.parquet,
    OUT/quarantine.parquet, OUT/summary.json.

    summary.json is written last and lists the parts, so readers never pick up a part of an
    unfinished write. read == imported + quarantined always holds (checked before it is written).
    `about` adds descriptive fields (source, image root) to the summary.
    """
    out_uri = str(out_uri).rstrip("/")
    parts = _PartWriter(out_uri, rows_per_part)
    quarantined: list[dict[str, Any]] = []
    by_reason: Counter[str] = Counter()
    by_note: Counter[str] = Counter()
    read = 0
    for item in items:
        read += 1
        if isinstance(item, Sample):
            parts.add(item)
            by_note.update(note.split(":", 1)[0] for note in item.notes)
        else:
            quarantined.append(shards.quarantine_to_row(item))
            by_reason[reason_code(item.reason)] += 1
    written = parts.close()
    shards.write_parquet(storage.join(out_uri, "quarantine.parquet"), quarantined, shards.QUARANTINE_SCHEMA)
    imported = sum(part["rows"] for part in written)
    if read != imported + len(quarantined):
        raise RuntimeError(f"import accounting broken: read {read} != imported {imported} "
                           f"+ quarantined {len(quarantined)}")
    summary = {"read": read, "imported": imported, "quarantined": len(quarantined),
               "by_reason": dict(sorted(by_reason.items())), "by_note": dict(sorted(by_note.items())),
               "parts": written,
               **{key: storage.redact(value) for key, value in about.items()},
               "out": storage.redact(out_uri), "schema_version": SCHEMA_VERSION}
    storage.write_json(storage.join(out_uri, "summary.json"), summary)
    log.info("wrote %d of %d records into %s (%d quarantined)",
             imported, read, storage.redact(out_uri), len(quarantined))
    return summary


def import_fea20k(jsonl: str, image_root: str, out_uri: str,
                  rows_per_part: int = DEFAULT_ROWS_PER_PART) -> dict[str, Any]:
    """FEA-20K JSONL + images -> the canonical dataset at OUT, bad records quarantined with reasons."""
    jsonl, image_root = str(jsonl), str(image_root)
    return write_samples(iter_jsonl(jsonl, image_root), out_uri, rows_per_part, source=jsonl, image_root=image_root)


# ---------------------------------------------------------------- export (engine/data/export.py)
from engine.data.export import export_committed, export_record  # noqa: E402,F401  (re-exported)
