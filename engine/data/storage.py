"""One filesystem layer for local paths and s3:// URIs.

Everything that reads or writes data goes through here, so that local disk and object storage
behave the same way to the rest of the engine:

- S3 settings come from the standard AWS_* environment variables (AWS_ENDPOINT_URL,
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION), so Ray workers and
  subprocesses reach the same store as the driver. Credentials are never logged: render URIs and
  configs for humans with `redact`.
- A single put is atomic on S3, and `write_bytes` makes local writes atomic too (temp + rename), so a
  half-written file never appears under its final name.
- `write_once` is the commit primitive: it never replaces an existing file (hard link locally,
  conditional put `IfNoneMatch="*"` on S3).
- s3fs caches directory listings; every listing and existence check here bypasses that cache,
  because commit records written by other processes must be seen.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.data.credentials import redact, s3_settings
from engine.data.retry import botocore_config_kwargs, retried_on_s3

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"

# ---------------------------------------------------------------- URIs
def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith(S3_SCHEME)


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI (always '/'-separated)."""
    base = str(uri)
    if not parts:
        return base
    tail = posixpath.join(*(str(p).strip("/") for p in parts if str(p)))
    return base.rstrip("/") + "/" + tail if tail else base


def parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        bucket_and_key = uri[len(S3_SCHEME):]
        return S3_SCHEME + posixpath.dirname(bucket_and_key) if "/" in bucket_and_key else uri
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


# ---------------------------------------------------------------- S3 settings
def fsspec_storage_options(uri: str) -> dict[str, Any]:
    """fsspec/s3fs keyword arguments for `uri` (empty for local paths); for datasets.load_dataset too."""
    if not is_s3(uri):
        return {}
    s = s3_settings()
    options: dict[str, Any] = {}
    if "endpoint_url" in s:
        options["endpoint_url"] = s["endpoint_url"]
    if "key" in s and "secret" in s:
        options["key"], options["secret"] = s["key"], s["secret"]
        if "token" in s:
            options["token"] = s["token"]
    if "region" in s:
        options["client_kwargs"] = {"region_name": s["region"]}
    return options


def polars_storage_options(uri: str) -> dict[str, str] | None:
    """`storage_options` for polars.scan_parquet / read_parquet (None for local paths)."""
    if not is_s3(uri):
        return None
    s = s3_settings()
    options = {"aws_region": s.get("region", "us-east-1")}
    if "endpoint_url" in s:
        options["aws_endpoint_url"] = s["endpoint_url"]
        if s["endpoint_url"].startswith("http://"):
            options["aws_allow_http"] = "true"
    if "key" in s and "secret" in s:
        options["aws_access_key_id"], options["aws_secret_access_key"] = s["key"], s["secret"]
        if "token" in s:
            options["aws_session_token"] = s["token"]
    return options


# ---------------------------------------------------------------- filesystems
def fs_and_path(uri: str | os.PathLike[str]):
    """(fsspec filesystem, path inside it) for a local path or an s3:// URI."""
    uri = os.fspath(uri)
    if is_s3(uri):
        return _s3fs(), uri[len(S3_SCHEME):]
    return _local_fs(), os.path.abspath(uri)


@functools.lru_cache(maxsize=1)
def _local_fs():
    # fsspec would hand back the same instance anyway, after hashing its arguments on every call.
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


def _s3fs():
    import s3fs

    # fsspec caches instances per argument set, so a changed environment gives a new client.
    return s3fs.S3FileSystem(**fsspec_storage_options(S3_SCHEME), config_kwargs=botocore_config_kwargs())


def _forget_listing(fs, path: str) -> None:
    """Drop s3fs's cached listings for `path` and its folder (no-op locally)."""
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
        fs.invalidate_cache(posixpath.dirname(path))


@retried_on_s3("reading")
def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    fs, path = fs_and_path(uri)
    return fs.cat_file(path)


def read_text(uri: str | os.PathLike[str]) -> str:
    return read_bytes(uri).decode("utf-8")


@retried_on_s3("writing")
def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write (replacing) in one step: a temp file renamed into place locally, a single put on S3."""
    uri = os.fspath(uri)
    if is_s3(uri):
        fs, path = fs_and_path(uri)
        fs.pipe_file(path, data)
        _forget_listing(fs, path)
        return
    path = os.path.abspath(uri)  # plain os calls: an fsspec instance per write costs more than small files
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = _write_temp(folder, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(uri: str | os.PathLike[str], text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | os.PathLike[str], obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_temp(folder: str, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the data is meant to be read by others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def write_once(uri: str | os.PathLike[str], data: bytes) -> bool:
    """Create `uri` with `data` unless it already exists. True when this call created it.

    Never overwrites, even with concurrent writers: exactly one of them gets True.
    Local: the data goes to a temp file that is hard-linked to the final name (link fails when the
    name exists; os.rename would silently replace it). S3: a conditional put (If-None-Match: *),
    which the server refuses with 412 when the key exists.
    """
    uri = os.fspath(uri)
    if is_s3(uri):
        return _s3_write_once(uri, data)
    path = os.path.abspath(uri)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = _write_temp(folder, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:  # a filesystem without hard links: exclusive create is the fallback
        log.debug("hard link unsupported in %s (%s); using O_EXCL", folder, err)
        return _exclusive_create(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _exclusive_create(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


@retried_on_s3("committing")
def _s3_write_once(uri: str, data: bytes, retries: int = 5) -> bool:
    fs, path = fs_and_path(uri)
    bucket, _, key = path.partition("/")
    try:
        for attempt in range(retries + 1):
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as err:  # noqa: BLE001 - classified below, re-raised when unknown
                status = _s3_error_status(err)
                if status == 412 or isinstance(err, FileExistsError):
                    return False
                # 409: another conditional put on the same key is in flight; its outcome decides.
                if status == 409 and attempt < retries:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise
        return False  # unreachable: the last attempt returns or raises
    finally:
        _forget_listing(fs, path)


def _s3_error_status(err: BaseException) -> int | None:
    """The HTTP status behind an s3fs/botocore error, wherever the library put it."""
    for candidate in (err, err.__cause__, err.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            if code == "PreconditionFailed":
                return 412
            if code in ("ConditionalRequestConflict", "OperationAborted"):
                return 409
            if status:
                return int(status)
    text = str(err)
    if "PreconditionFailed" in text or ("412" in text and "Precondition" in text):
        return 412
    if "ConditionalRequestConflict" in text:
        return 409
    return None


@retried_on_s3("checking")
def exists(uri: str | os.PathLike[str]) -> bool:
    fs, path = fs_and_path(uri)
    _forget_listing(fs, path)
    return fs.exists(path)


@retried_on_s3("deleting")
def remove(uri: str | os.PathLike[str]) -> None:
    """Delete one file (missing is fine)."""
    fs, path = fs_and_path(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
    _forget_listing(fs, path)


@retried_on_s3("listing")
def list_files(uri: str | os.PathLike[str], suffix: str | None = None, recursive: bool = False) -> list[str]:
    """Sorted URIs of the files under the folder `uri` (empty when it does not exist).

    Hidden temp files ('.tmp-*') are never listed.
    """
    uri = os.fspath(uri).rstrip("/")
    fs, path = fs_and_path(uri)
    _forget_listing(fs, path)
    try:
        if recursive:
            entries = fs.find(path, detail=True, withdirs=False)
            infos = list(entries.values())
        else:
            infos = fs.ls(path, detail=True, **({"refresh": True} if is_s3(uri) else {}))
    except FileNotFoundError:
        return []
    found = []
    for info in infos:
        if info.get("type") != "file":
            continue
        name = info["name"].rstrip("/")
        if basename(name).startswith(".tmp-") or (suffix and not name.endswith(suffix)):
            continue
        found.append(S3_SCHEME + name if is_s3(uri) else name)
    return sorted(found)


@retried_on_s3("listing")
def file_fingerprints(uri: str) -> dict[str, tuple[int, str]]:
    """relative path -> (size, etag or mtime) for every file under the folder `uri`."""
    fs, path = fs_and_path(uri)
    path = path.rstrip("/")
    _forget_listing(fs, path)
    entries = fs.find(path, detail=True, withdirs=False)
    prints = {}
    for name, info in entries.items():
        rel = posixpath.relpath(name, path)
        version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
        prints[rel] = (int(info.get("size") or 0), version)
    return prints


# ---------------------------------------------------------------- node-local cache
def upload_dir(local_dir: str | os.PathLike[str], uri: str) -> None:
    """Copy a local folder's files under `uri` (an s3:// prefix or a local folder), file by file."""
    root = Path(local_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        write_bytes(join(uri, path.relative_to(root).as_posix()), path.read_bytes())


def default_cache_dir() -> str:
    return os.environ.get("FEA_CACHE_DIR") or os.path.join(Path.home(), ".cache", "fea")


def materialize(uri: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A local path holding the folder `uri`: local paths as they are; s3:// folders copied once.

    The cache entry is named by the URI and a fingerprint of the listing (sizes and ETags), so a
    changed remote folder gets a new copy and an unchanged one is reused. The copy is made in a
    temp folder and renamed into place, so a crash never leaves a half-copied entry behind.
    """
    uri = os.fspath(uri)
    if not is_s3(uri):
        return uri
    prints = file_fingerprints(uri)
    if not prints:
        raise FileNotFoundError(f"{redact(uri)}: no files under this prefix")
    digest = hashlib.sha256(json.dumps([uri.rstrip("/"), sorted(prints.items())]).encode()).hexdigest()[:16]
    root = Path(cache_dir or default_cache_dir()) / "materialized"
    target = root / f"{basename(uri) or 'root'}-{digest}"
    if target.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        fs, path = fs_and_path(uri)
        for rel in sorted(prints):
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            _get_file(fs, posixpath.join(path.rstrip("/"), rel), str(dest))
        try:
            os.rename(staging, target)
            log.info("materialized %s into %s (%d files)", redact(uri), target, len(prints))
        except OSError:
            if not target.is_dir():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _get_file(fs, path: str, dest: str) -> None:
    retried_on_s3("downloading")(lambda _uri: fs.get_file(path, dest))(S3_SCHEME + path)
