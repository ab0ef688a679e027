"""Stored forms of samples: Arrow schemas, Parquet and WebDataset shards (commits.py says which are committed).

Every table that holds samples shares the SAMPLE_SCHEMA columns, so any of them reads back into
`engine.core.types.Sample`. Free-form fields are stored as JSON text in both formats: source datasets
carry metadata of any shape, varying from row to row, and a reader that infers one schema (a struct
column; `datasets.load_dataset("webdataset")`, which infers it from a shard's first five records)
breaks on the first record that differs. In Parquet that is the `meta` column. In a WebDataset
record's `.json` member, `meta_info` and also the `AUs` and `labels` lists are JSON text (an
unknown list is empty, and an empty list infers as a list of nulls); `decode_shard_json` turns a
member back into the FEA-20K record.

Shards are built in memory and written with one put, so a partial shard never appears under its
final name; the same rows always give the same bytes (deterministic tar headers and ordering), so a
redone partition rewrites identical files.

`register_webdataset_s3()` adds an `s3` scheme to webdataset's opener table, so
`webdataset.WebDataset("s3://bucket/part-00000.tar")` reads through the same S3 settings
(`open_webdataset` does both).
"""
from __future__ import annotations

import functools
import io
import json
import re
import sys
import tarfile
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from engine.data import retry, storage
from engine.core.types import SCHEMA_VERSION, QuarantineRecord, Sample, ShardRef, sha256_hex

KINDS = ("accepted", "rejected", "quarantine")
FORMATS = ("parquet", "webdataset")


# ---------------------------------------------------------------- schemas
def _metadata(kind: str) -> dict[bytes, bytes]:
    return {b"schema_version": str(SCHEMA_VERSION).encode(), b"kind": kind.encode()}


REWARDS_TYPE = pa.struct([("au", pa.float64()), ("acc", pa.float64()), ("format", pa.float64()),
                          ("total", pa.float64())])
PROVENANCE_TYPE = pa.struct([("job_id", pa.string()), ("model_id", pa.string()), ("backend", pa.string()),
                             ("attempts", pa.int32()), ("policy", pa.string()),
                             ("verifier_version", pa.string()), ("prompt_hash", pa.string())])
ATTEMPT_TYPE = pa.struct([("attempt", pa.int32()), ("completion", pa.string()),
                          ("reasons", pa.list_(pa.string())), ("rewards", REWARDS_TYPE)])

SAMPLE_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # the encoded image file, byte for byte
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("image_path", pa.string()),  # original relative path (provenance, export)
    pa.field("question", pa.string()),
    pa.field("aus", pa.list_(pa.string())),  # canonical ids, sorted numerically
    pa.field("labels", pa.list_(pa.string())),  # normalised labels (open sets)
    pa.field("description", pa.string()),  # reference reasoning; in accepted shards: the accepted completion
    pa.field("meta", pa.string()),  # JSON object
    pa.field("notes", pa.list_(pa.string())),  # what import changed or left out (Sample.notes)
    pa.field("label_set", pa.list_(pa.string())),  # the source's answer labels (Sample.label_set)
]
SAMPLE_SCHEMA = pa.schema(SAMPLE_FIELDS, metadata=_metadata("samples"))
ACCEPTED_SCHEMA = pa.schema(SAMPLE_FIELDS + [pa.field("provenance", PROVENANCE_TYPE),
                                             pa.field("rewards", REWARDS_TYPE)], metadata=_metadata("accepted"))
REJECTED_SCHEMA = pa.schema(SAMPLE_FIELDS + [pa.field("attempts", pa.list_(ATTEMPT_TYPE))],
                            metadata=_metadata("rejected"))
QUARANTINE_SCHEMA = pa.schema([
    pa.field("source", pa.string()),
    pa.field("line", pa.int64()),
    pa.field("sample_id", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("raw", pa.string()),
], metadata=_metadata("quarantine"))


# ---------------------------------------------------------------- rows
# One encoder for every JSON text stored in shards (json.dumps builds a new one per call).
_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def meta_to_json(meta: Mapping[str, Any]) -> str:
    return _JSON.encode(dict(meta))


def sample_to_row(sample: Sample) -> dict[str, Any]:
    return {"id": sample.id, "dataset": sample.dataset, "image": sample.image,
            "image_sha256": sample.image_sha256, "image_path": sample.image_path, "question": sample.question,
            "aus": list(sample.aus), "labels": list(sample.labels), "description": sample.description,
            "meta": meta_to_json(sample.meta), "notes": list(sample.notes), "label_set": list(sample.label_set)}


def row_to_sample(row: Mapping[str, Any]) -> Sample:
    """A Sample from any row with the sample columns (extra columns such as provenance are ignored)."""
    meta = row.get("meta") or "{}"
    return Sample(id=row["id"], dataset=row["dataset"], image=bytes(row["image"]),
                  image_sha256=row["image_sha256"], image_path=row.get("image_path") or "",
                  question=row.get("question") or "", aus=tuple(row.get("aus") or ()),
                  labels=tuple(row.get("labels") or ()), description=row.get("description") or "",
                  meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
                  notes=tuple(row.get("notes") or ()), label_set=tuple(row.get("label_set") or ()))


def accepted_row(sample: Sample, completion: str, provenance: Mapping[str, Any],
                 rewards: Mapping[str, float]) -> dict[str, Any]:
    """An ACCEPTED_SCHEMA row: the sample with its accepted completion as `description`."""
    row = sample_to_row(sample)
    row["description"] = completion
    row["provenance"] = {name: provenance.get(name) for name in PROVENANCE_TYPE.names}
    row["rewards"] = {name: float(rewards[name]) for name in REWARDS_TYPE.names}
    return row


def rejected_row(sample: Sample, attempts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A REJECTED_SCHEMA row; each attempt: {attempt, completion, reasons, rewards{au, acc, format, total}}."""
    row = sample_to_row(sample)
    row["attempts"] = [{"attempt": int(a["attempt"]), "completion": a["completion"],
                        "reasons": list(a["reasons"]),
                        "rewards": {n: float(a["rewards"][n]) for n in REWARDS_TYPE.names}}
                       for a in attempts]
    return row


def quarantine_to_row(record: QuarantineRecord) -> dict[str, Any]:
    return {"source": storage.redact(record.source), "line": record.line, "sample_id": record.sample_id,
            "reason": record.reason, "raw": record.raw}


def row_to_quarantine(row: Mapping[str, Any]) -> QuarantineRecord:
    return QuarantineRecord(source=row["source"], line=int(row["line"]), sample_id=row.get("sample_id"),
                            reason=row["reason"], raw=row.get("raw") or "")


def fea20k_record(row: Mapping[str, Any], image: str | None = None) -> dict[str, Any]:
    """The FEA-20K JSON fields for a stored row; provenance/rewards/attempts (when present) kept beside them."""
    return _fea20k_fields(row, image, json.loads(row.get("meta") or "{}"))


def _fea20k_fields(row: Mapping[str, Any], image: str | None, meta_info: Any) -> dict[str, Any]:
    record = {"id": row["id"], "dataset": row["dataset"],
              "image": image if image is not None else (row.get("image_path") or ""),
              "question": row.get("question") or "", "AUs": list(row.get("aus") or ()),
              "labels": list(row.get("labels") or ()), "description": row.get("description") or "",
              "meta_info": meta_info, "is_valid": True, "image_sha256": row["image_sha256"]}
    for extra in ("provenance", "rewards", "attempts"):
        if row.get(extra) is not None:
            record[extra] = row[extra]
    return record


# Fields of a WebDataset `.json` member stored as JSON text (see the module docstring).
JSON_TEXT_FIELDS = ("AUs", "labels", "meta_info", "notes", "label_set")


def fea20k_json(row: Mapping[str, Any]) -> bytes:
    """The `.json` member of a WebDataset record: `fea20k_record(row)` plus the row's notes and
    label_set (so a tar reads back into the same Sample as the Parquet row), with JSON_TEXT_FIELDS
    as JSON text (the row's meta text, already encoded by `meta_to_json`, is used as it is)."""
    meta = row.get("meta") or "{}"
    if not isinstance(json.loads(meta), dict):  # the text goes into the shard as is: it must be an object
        raise ValueError(f"sample {row.get('id')!r}: meta is not a JSON object")
    record = _fea20k_fields(row, None, meta)
    record["notes"], record["label_set"] = list(row.get("notes") or ()), list(row.get("label_set") or ())
    for name in ("AUs", "labels", "notes", "label_set"):
        record[name] = _JSON.encode(record[name])
    return _JSON.encode(record).encode("utf-8")


def decode_shard_json(member: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """A WebDataset `.json` member (bytes, text, or the dict a reader already parsed) -> the FEA-20K
    record, with JSON_TEXT_FIELDS decoded."""
    record = dict(member) if isinstance(member, Mapping) else json.loads(member)
    for name in JSON_TEXT_FIELDS:
        if isinstance(record.get(name), str):
            record[name] = json.loads(record[name])
    return record


# ---------------------------------------------------------------- Parquet
def schema_kind(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(b"kind", b"samples").decode()


# Columns holding encoded image files: PNG/JPEG do not compress further, so compressing them (and
# keeping min/max statistics of whole images) costs CPU for nothing. Dictionary encoding is off for
# all columns: zstd already squeezes the repeated values, and the dictionaries doubled encoding time.
_IMAGE_COLUMNS = frozenset({"image"})


@functools.lru_cache(maxsize=None)
def _leaf_columns(schema: pa.Schema) -> tuple[str, ...]:
    """Parquet's leaf column paths ('provenance.job_id', 'aus.list.element'): per-column settings
    name leaves, and a struct or list column's own name matches none of them."""
    buffer = io.BytesIO()
    pq.write_table(schema.empty_table(), buffer)
    parquet_schema = pq.ParquetFile(io.BytesIO(buffer.getvalue())).schema
    return tuple(parquet_schema.column(i).path for i in range(len(parquet_schema)))


def parquet_bytes(table: pa.Table, row_group_size: int = 256) -> bytes:
    """A Parquet file in memory: zstd for every column except images, which are stored as they are."""
    leaves = _leaf_columns(table.schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size,
                   compression={path: "NONE" if path in _IMAGE_COLUMNS else "zstd" for path in leaves},
                   use_dictionary=False, write_statistics=[path for path in leaves if path not in _IMAGE_COLUMNS])
    return buffer.getvalue()


def warm_up() -> None:
    """Pay the one-off costs of the first shard write now: the first Arrow array built from Python
    objects imports pandas (pyarrow looks for pandas types; about a second of CPU on a small
    machine), and each schema's Parquet column paths are looked up once."""
    for schema in (SAMPLE_SCHEMA, ACCEPTED_SCHEMA, REJECTED_SCHEMA, QUARANTINE_SCHEMA):
        parquet_bytes(pa.Table.from_pylist([], schema=schema))


def write_parquet(uri: str, rows: Iterable[Mapping[str, Any]], schema: pa.Schema,
                  row_group_size: int = 256) -> ShardRef:
    """Write `rows` as one Parquet file in a single put; the ShardRef carries the sha256 of its bytes."""
    table = pa.Table.from_pylist(list(rows), schema=schema)
    data = parquet_bytes(table, row_group_size)
    storage.write_bytes(uri, data)
    return ShardRef(uri=uri, format="parquet", kind=schema_kind(schema), rows=table.num_rows,
                    sha256=sha256_hex(data))


def iter_parquet_rows(uri: str, batch_size: int = 64, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one Parquet file as dicts, a few at a time (images stay out of memory until needed).
    On S3, a transient fault mid-file reopens it and goes on after the rows already given."""
    return retry.resumed_on_s3(uri, lambda skip: _parquet_rows(uri, batch_size, columns, skip))


def _parquet_rows(uri: str, batch_size: int, columns: list[str] | None, skip: int) -> Iterator[dict[str, Any]]:
    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield from batch.slice(skip).to_pylist()
            skip = 0


# ---------------------------------------------------------------- WebDataset
_KEY_SAFE = re.compile(r"[A-Za-z0-9-]")


def encode_key(sample_id: str) -> str:
    """A WebDataset-safe, reversible key for a sample id.

    WebDataset splits a member name at the first '.' of its basename and treats '/' as folders, so
    ids such as "raf/0001.jpg" would be torn apart. Every character outside [A-Za-z0-9-] becomes
    '_' + its UTF-8 bytes in hex ('_' itself included), which keeps keys readable and distinct.
    The real id is also stored in the record's json.
    """
    if not sample_id:
        raise ValueError("a sample id must not be empty")
    out = []
    for ch in sample_id:
        out.append(ch if _KEY_SAFE.fullmatch(ch) else "".join(f"_{b:02x}" for b in ch.encode("utf-8")))
    return "".join(out)


def decode_key(key: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "_":
            raw += bytes.fromhex(key[i + 1:i + 3])
            i += 3
        else:
            raw += key[i].encode()
            i += 1
    return raw.decode("utf-8")


def image_extension(image: bytes, fallback: str = "png") -> str:
    """'png' / 'jpg' / ... from the file's magic bytes (WebDataset decoders go by extension)."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if image.startswith(b"\xff\xd8"):
        return "jpg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "webp"
    if image[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if image[:2] == b"BM":
        return "bmp"
    if image[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return fallback


def wds_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A WebDataset record for a stored row: <key>.<png|jpg> (the image) + <key>.json (FEA-20K fields)."""
    image = bytes(row["image"])
    return {"__key__": encode_key(row["id"]), image_extension(image): image, "json": fea20k_json(row)}


def _member_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return _JSON.encode(value).encode("utf-8")


def _gnu_header(name: str, size: int) -> bytes:
    """tarfile's GNU header for a regular member with the fixed metadata every shard uses."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


# Between members only the name, the size and the checksum change, so headers are stamped from a
# template: tarfile's own header code costs as much as all the rest of a shard write.
_HEADER_TEMPLATE = bytearray(_gnu_header("", 0))
_HEADER_TEMPLATE[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
_TEMPLATE_SUM = sum(_HEADER_TEMPLATE) - sum(_HEADER_TEMPLATE[124:136])  # the size field is added per member
_MAX_FAST_SIZE = 8**11  # what the 11 octal digits of the size field hold
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)


def _member_header(name: str, size: int) -> bytes:
    """Exactly the header tarfile writes; long names and huge members (GNU extension headers) go to tarfile."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > tarfile.LENGTH_NAME or size >= _MAX_FAST_SIZE:
        return _gnu_header(name, size)
    size_field = b"%011o\x00" % size
    header = bytearray(_HEADER_TEMPLATE)
    header[:len(raw)] = raw
    header[124:136] = size_field
    header[148:155] = b"%06o\x00" % (_TEMPLATE_SUM + sum(raw) + sum(size_field))  # byte 8 stays a space
    return bytes(header)


def build_tar(records: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Tar bytes for WebDataset records, deterministic: fixed mtime/owner/mode, record order, sorted fields.

    Byte for byte what `tarfile` (GNU format) writes for the same members."""
    parts: list[bytes] = []
    offset = 0
    seen: set[str] = set()
    for record in records:
        key = record["__key__"]
        if not key or "." in key or "/" in key:
            raise ValueError(f"unsafe WebDataset key {key!r}: use encode_key()")
        if key in seen:
            raise ValueError(f"duplicate WebDataset key {key!r} in one shard")
        seen.add(key)
        for field in sorted(k for k in record if not k.startswith("__")):
            data = _member_bytes(record[field])
            header = _member_header(f"{key}.{field}", len(data))
            padding = -len(data) % tarfile.BLOCKSIZE
            parts += (header, data, _ZERO_BLOCK[:padding])
            offset += len(header) + len(data) + padding
    offset += 2 * tarfile.BLOCKSIZE  # end of archive: two zero blocks, then zeros up to a full record
    parts += (_ZERO_BLOCK, _ZERO_BLOCK, bytes(-offset % tarfile.RECORDSIZE))
    return b"".join(parts), len(seen)


def write_webdataset(uri: str, records: Iterable[Mapping[str, Any]], kind: str = "accepted") -> ShardRef:
    """Write one WebDataset tar shard in a single put. Records: {"__key__", "png"/"jpg": bytes, "json": dict}."""
    data, count = build_tar(records)
    storage.write_bytes(uri, data)
    return ShardRef(uri=uri, format="webdataset", kind=kind, rows=count, sha256=sha256_hex(data))


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
    fs, path = storage.fs_and_path(url)
    return fs.open(path, mode)


def register_webdataset_s3() -> None:
    """Let webdataset open s3:// URLs through our storage layer (it has no s3 opener of its own).

    Idempotent. Importing this module does it already when webdataset is loaded; otherwise it is
    left to the first reader, because importing webdataset imports torch (seconds), which data-only
    commands (import, export, shard writing) do not need.
    """
    import webdataset  # noqa: F401  (the package import creates the submodule)

    # `webdataset.gopen` is the function (it shadows the submodule), so go through sys.modules.
    sys.modules["webdataset.gopen"].gopen_schemes["s3"] = _gopen_fsspec


def open_webdataset(urls: str | list[str], **kwargs: Any):
    """`webdataset.WebDataset(urls, **kwargs)` with s3:// support registered."""
    register_webdataset_s3()
    import webdataset

    return webdataset.WebDataset(urls, **kwargs)


if "webdataset" in sys.modules:
    register_webdataset_s3()
