"""A synthesis output read partition by partition, from its Parquet shards or its WebDataset tars.

Each partition's accepted shard is read whole into memory, its bytes checked against the sha256 in
the partition's commit record, and only those checked bytes are parsed (the file is not opened a
second time). Records go through the same validation as every other stored sample
(`engine.data.dataset.RecordValidator`), so both formats give the same Samples. Tar members are
taken as raw bytes (the `.json` member parsed as JSON); nothing is ever unpickled.

Partition ids are the commit records' names: partition 3 is "part-00003".
"""
from __future__ import annotations

import functools
import io
import json
import logging
from collections import Counter
from typing import Any, Iterator, Sequence

from engine.core.types import PartitionCommit, Sample, ShardRef
from engine.data import shards, storage
from engine.data.commits import read_checked_shard, read_commits, resolve_shard_uri

log = logging.getLogger(__name__)

# DataSource.format -> the format name a commit record gives its shards.
SHARD_FORMATS = {"parquet": "parquet", "wds": "webdataset"}


def partition_id(number: int) -> str:
    return f"part-{number:05d}"


def is_synthesis_output(uri: str) -> bool:
    from engine.data.dataset import input_kind

    try:
        return input_kind(uri) == "synthesis"
    except ValueError:
        return False


def is_finished(uri: str) -> bool:
    """`fea synth` writes OUT/summary.json once every partition of the job is committed."""
    return storage.exists(storage.join(uri, "summary.json"))


def committed_partitions(uri: str, only: Sequence[str] | None = None) -> list[PartitionCommit]:
    """The partitions committed under `uri` (by number), or exactly those in `only` (in its order)."""
    commits = read_commits(uri)
    if only is None:
        return commits
    by_id = {partition_id(c.partition): c for c in commits}
    missing = [p for p in only if p not in by_id]
    if missing:
        raise ValueError(f"{storage.redact(uri)}: partitions not committed: {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return [by_id[p] for p in only]


def accepted_shard(uri: str, commit: PartitionCommit, fmt: str) -> ShardRef | None:
    """The partition's accepted shard in `fmt` ("parquet" | "wds"); None when it accepted nothing."""
    found = [s for s in commit.shards if s.kind == "accepted" and s.format == SHARD_FORMATS[fmt]]
    if found:
        return found[0]
    if commit.accepted:
        raise ValueError(f"{storage.redact(uri)}: {partition_id(commit.partition)} has no accepted {fmt} shard "
                         f"(its commit lists {sorted({s.format for s in commit.shards})})")
    return None


def partition_samples(uri: str, commit: PartitionCommit, fmt: str, seen_ids: set[str]) -> Iterator[Sample]:
    """The usable accepted samples of one committed partition; unusable records are counted in a warning.
    `seen_ids` is shared across the partitions of a source, so a repeated id is caught there too."""
    from engine.data.dataset import RecordValidator

    shard = accepted_shard(uri, commit, fmt)
    if shard is None:
        return
    shard_uri = resolve_shard_uri(uri, shard.uri)
    data = read_checked_shard(shard_uri, shard.sha256)
    validator = RecordValidator(source=shard_uri, seen_ids=seen_ids, full_image_check=False)
    skipped: Counter[str] = Counter()
    for index, (record, image) in enumerate(_wds_records(data, shard_uri) if fmt == "wds"
                                              else _parquet_records(data)):
        item = validator.from_record(record, index, functools.partial(json.dumps, record, default=str),
                                     lambda _rel, img=image: img,
                                     expected_sha256=record.get("image_sha256"))
        if isinstance(item, Sample):
            yield item
        else:
            skipped[item.reason.split(":", 1)[0]] += 1
    if skipped:
        log.warning("%s: skipped %d unusable records %s", storage.redact(shard_uri), sum(skipped.values()),
                    dict(skipped))


def _parquet_records(data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=64):
        for row in batch.to_pylist():
            record = shards.fea20k_record(row)
            record["notes"] = list(row.get("notes") or ())
            record["label_set"] = list(row.get("label_set") or ())
            yield record, bytes(row["image"] or b"")


def _wds_records(data: bytes, url: str) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(FEA-20K record, image bytes) per tar record: members grouped by key with webdataset's own
    iterators, read as bytes (no decoders, so no pickle handler can run)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**entry, "__url__": url} for entry in tar_file_iterator(io.BytesIO(data)))
    for member in group_by_keys(files):
        images = [k for k in member if not k.startswith("__") and k != "json"]
        if len(images) != 1 or "json" not in member:
            raise ValueError(f"WebDataset record {member.get('__key__')!r}: expected one image and a json "
                             f"member, found {sorted(k for k in member if not k.startswith('__'))}")
        yield shards.decode_shard_json(member["json"]), bytes(member[images[0]])
