"""Readers trust a committed shard only if its bytes are the ones its commit record names.

A shard changed after its commit (a second writer, a stray copy, bit rot) would otherwise be read as
if it were the committed data; hashing costs one extra pass over each shard read.
"""
from __future__ import annotations

import hashlib

from engine.data import storage

_CHUNK = 8 << 20


class ShardIntegrityError(ValueError):
    """A committed shard's bytes differ from the sha256 in its commit record."""


def file_sha256(uri: str) -> str:
    digest = hashlib.sha256()
    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_shard(uri: str, expected_sha256: str) -> None:
    try:
        found = file_sha256(uri)
    except FileNotFoundError:
        raise ShardIntegrityError(f"{storage.redact(uri)}: committed shard is missing; refusing to read the "
                                  "output without it") from None
    if found != expected_sha256:
        raise ShardIntegrityError(f"{storage.redact(uri)}: sha256 {found[:16]}... differs from its commit record "
                                  f"({expected_sha256[:16]}...); the shard was changed after its commit, "
                                  "refusing to read it")
