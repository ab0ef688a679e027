"""Committed synthesis output -> FEA-20K JSONL with the images beside it (`fea export`)."""
from __future__ import annotations

import json
from typing import Any

from engine.data.commits import committed_shard_uris
from engine.data import shards, storage
from engine.data.dataset import input_kind


def export_record(row: dict[str, Any], image: str) -> dict[str, Any]:
    """A committed shard row as an FEA-20K record; provenance, rewards and attempts go into meta_info."""
    record = shards.fea20k_record(row, image=image)
    record.pop("image_sha256")
    meta = dict(record["meta_info"])
    meta["source_image"] = {"path": row.get("image_path") or "", "sha256": row["image_sha256"]}
    for extra in ("provenance", "rewards", "attempts"):
        if extra in record:
            meta[extra] = record.pop(extra)
    record["meta_info"] = meta
    return record


def export_committed(uri: str, out_jsonl: str, kind: str = "accepted") -> dict[str, Any]:
    """Committed accepted (or rejected) samples of a synthesis output -> FEA-20K JSONL + images beside it.

    Images go to <folder of out_jsonl>/images/<key>.<ext>, and each record's `image` is relative to
    that folder, so the result imports again with image root = its folder.
    """
    uri, out_jsonl = str(uri).rstrip("/"), str(out_jsonl)
    if kind not in ("accepted", "rejected"):
        raise ValueError(f"kind must be 'accepted' or 'rejected', got {kind!r}")
    if input_kind(uri) != "synthesis":
        raise ValueError(f"{storage.redact(uri)}: not a synthesis output (no job.json or commits/)")
    out_dir = storage.parent(out_jsonl)
    lines: list[str] = []
    seen: set[str] = set()
    shard_uris = committed_shard_uris(uri, kind, "parquet")
    for shard_uri in shard_uris:
        for row in shards.iter_parquet_rows(shard_uri):
            if row["id"] in seen:
                raise RuntimeError(f"sample {row['id']!r} appears in two committed partitions of {storage.redact(uri)}")
            seen.add(row["id"])
            image = bytes(row["image"])
            rel = f"images/{shards.encode_key(row['id'])}.{shards.image_extension(image)}"
            storage.write_bytes(storage.join(out_dir, rel), image)
            lines.append(json.dumps(export_record(row, rel), ensure_ascii=False, sort_keys=True))
    storage.write_text(out_jsonl, "".join(line + "\n" for line in lines))
    return {"kind": kind, "exported": len(lines), "shards": len(shard_uris),
            "out": storage.redact(out_jsonl), "images": storage.redact(storage.join(out_dir, "images"))}
