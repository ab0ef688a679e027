"""A synthesis output's commits: where a partition's shards and commit record live, how they are written,
read back and verified.

    OUT/commits/part-00012.json   the partition's commit record: written last, write-once
    OUT/<kind>/part-00012.<sfx>   its shards (SHARD_LAYOUT), named by the partition's number

A partition is visible only through its commit record, which names each shard with its sha256; its
shards are written first, so a commit never names a missing file, and a redone partition replaces only
its own uncommitted files. Readers trust a committed shard only if its bytes are the ones its commit
record names: a shard changed after its commit (a second writer, a stray copy, bit rot) is refused.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from engine.core.types import PartitionCommit, ShardRef, sha256_hex
from engine.data import shards, storage
from engine.data.retry import retried_on_s3

# (kind = folder, file suffix, format) of every shard a partition may have
SHARD_LAYOUT = (
    ("accepted", "tar", "webdataset"),
    ("accepted", "parquet", "parquet"),
    ("rejected", "parquet", "parquet"),
    ("quarantine", "parquet", "parquet"),
)
_SCHEMAS = {"accepted": shards.ACCEPTED_SCHEMA, "rejected": shards.REJECTED_SCHEMA,
            "quarantine": shards.QUARANTINE_SCHEMA}
_CHUNK = 8 << 20


# ---------------------------------------------------------------- layout
def commits_dir(out_prefix: str) -> str:
    return storage.join(out_prefix, "commits")


def commit_uri(out_prefix: str, partition: int) -> str:
    return storage.join(commits_dir(out_prefix), f"part-{partition:05d}.json")


def shard_path(kind: str, partition: int, suffix: str) -> str:
    """Shard location relative to the output prefix (commits store it relative: relocatable output)."""
    return f"{kind}/part-{partition:05d}.{suffix}"


def resolve_shard_uri(out_prefix: str, shard_uri: str) -> str:
    """Shard URIs in commits may be relative to the output prefix (relocatable) or absolute."""
    if storage.is_s3(shard_uri) or shard_uri.startswith("/"):
        return shard_uri
    return storage.join(out_prefix, shard_uri)


def existing_shards(out: str) -> set[str]:
    """Relative paths (as `shard_path` makes them) of the shard files under `out`, one listing per kind."""
    return {f"{kind}/{storage.basename(uri)}"
            for kind in dict.fromkeys(kind for kind, _, _ in SHARD_LAYOUT)
            for uri in storage.list_files(storage.join(out, kind))}


# ---------------------------------------------------------------- writing
# One thread per shard of a partition (Arrow encoding, hashing and fsync release the GIL).
_SHARD_WRITERS = ThreadPoolExecutor(max_workers=len(SHARD_LAYOUT), thread_name_prefix="fea-shard-writer")


def write_shards(out: str, partition: int, rows: dict[str, list[dict]],
                 leftovers: set[str] | None = None) -> tuple[ShardRef, ...]:
    """Write a partition's shards side by side (rows by kind) and return them as the commit names them.

    A shard kind the partition has no rows for must not keep a file from an interrupted earlier try.
    `leftovers`, the shard files known to exist under `out` (`existing_shards`, kept up to date here),
    limits the deletes to those; without it every empty kind is deleted blindly, which costs a round
    trip each on S3."""
    pending, removals = [], []
    for kind, suffix, fmt in SHARD_LAYOUT:
        rel = shard_path(kind, partition, suffix)
        uri = storage.join(out, rel)
        if rows[kind]:
            if leftovers is not None:
                leftovers.add(rel)  # before writing: a failed write may still leave a file
            pending.append((rel, _SHARD_WRITERS.submit(_write_shard, uri, kind, fmt, rows[kind])))
        elif leftovers is None or rel in leftovers:
            removals.append(_SHARD_WRITERS.submit(storage.remove, uri))
    # .result() re-raises a failed write or removal here, before anything is committed
    written = tuple(ShardRef(uri=rel, format=ref.format, kind=ref.kind, rows=ref.rows, sha256=ref.sha256)
                    for rel, ref in ((rel, future.result()) for rel, future in pending))
    for removal in removals:
        removal.result()
    if leftovers is not None:
        leftovers.difference_update(shard_path(kind, partition, suffix) for kind, suffix, _ in SHARD_LAYOUT
                                    if not rows[kind])
    return written


def _write_shard(uri: str, kind: str, fmt: str, rows: list[dict]) -> ShardRef:
    if fmt == "webdataset":
        return shards.write_webdataset(uri, [shards.wds_record(r) for r in rows], kind=kind)
    return shards.write_parquet(uri, rows, _SCHEMAS[kind])


def write_commit(out: str, commit: PartitionCommit) -> bool:
    """The commit record, write-once: False when another writer committed this partition first."""
    return storage.write_once(commit_uri(out, commit.partition), commit.to_json().encode("utf-8"))


# ---------------------------------------------------------------- reading
def read_commit(out: str, partition: int) -> PartitionCommit | None:
    uri = commit_uri(out, partition)
    if not storage.exists(uri):
        return None
    return PartitionCommit.from_json(storage.read_text(uri))


def read_commits(out_prefix: str) -> list[PartitionCommit]:
    """The partitions committed under a synthesis output, by partition number."""
    commits = []
    for uri in storage.list_files(commits_dir(out_prefix), suffix=".json"):
        try:
            commits.append(PartitionCommit.from_json(storage.read_text(uri)))
        except (ValueError, TypeError, KeyError) as err:
            # Commit records are written once and whole; a broken one is damage, not a partial write.
            raise ValueError(f"{storage.redact(uri)}: unreadable commit record ({err})") from err
    return sorted(commits, key=lambda c: c.partition)


def committed_shard_uris(out_prefix: str, kind: str, fmt: str, verify: bool = True) -> list[str]:
    """URIs of the committed shards of one kind ("accepted" | "rejected" | "quarantine") and format.

    With `verify`, each shard's sha256 is checked against its commit record first
    (ShardIntegrityError on a mismatch), so no reader reads a shard changed after its commit."""
    if kind not in shards.KINDS:
        raise ValueError(f"kind must be one of {shards.KINDS}, got {kind!r}")
    if fmt not in shards.FORMATS:
        raise ValueError(f"fmt must be one of {shards.FORMATS}, got {fmt!r}")
    chosen = [(resolve_shard_uri(out_prefix, shard.uri), shard.sha256)
              for commit in read_commits(out_prefix)
              for shard in commit.shards if shard.kind == kind and shard.format == fmt]
    for uri, sha256 in chosen if verify else ():
        check_shard(uri, sha256)
    return [uri for uri, _ in chosen]


# ---------------------------------------------------------------- verifying
class ShardIntegrityError(ValueError):
    """A committed shard's bytes differ from the sha256 in its commit record."""


@retried_on_s3("hashing")  # a fault mid-file hashes it again from the start
def file_sha256(uri: str) -> str:
    digest = hashlib.sha256()
    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_shard(uri: str, expected_sha256: str) -> None:
    """The shard, streamed through sha256, is the one its commit record names."""
    try:
        found = file_sha256(uri)
    except FileNotFoundError:
        raise _missing(uri) from None
    _same_or_fail(uri, found, expected_sha256)


def read_checked_shard(uri: str, expected_sha256: str) -> bytes:
    """The shard's bytes, read once and checked against its commit record."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise _missing(uri) from None
    _same_or_fail(uri, sha256_hex(data), expected_sha256)
    return data


def _missing(uri: str) -> ShardIntegrityError:
    return ShardIntegrityError(f"{storage.redact(uri)}: committed shard is missing; refusing to read the output "
                               "without it")


def _same_or_fail(uri: str, found: str, expected_sha256: str) -> None:
    if found != expected_sha256:
        raise ShardIntegrityError(f"{storage.redact(uri)}: sha256 {found[:16]}... differs from its commit record "
                                  f"({expected_sha256[:16]}...); the shard was changed after its commit, "
                                  "refusing to read it")
