"""One writer per output: a job holds a lease on OUT while it writes there.

Local OUT: an exclusive `flock` on OUT/.lease. The kernel drops it when the holder dies, however it
dies, so a crashed driver never blocks the next one; the file also names the holder for messages.

s3:// OUT: the object OUT/_lease.json, created with a conditional put (If-None-Match: *) and renewed
by a heartbeat thread with If-Match on its ETag, so two drivers can never both believe they hold it.
A lease that was not renewed for `ttl` seconds has lapsed (its driver died or lost the store) and
may be taken over, again by If-Match. A holder on this machine whose process is gone is taken over
at once, so rerunning a killed job does not wait out the expiry.

The writer actor fences with `verify` before each partition: a driver that lost its lease stops
writing instead of racing the new holder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from engine.data import storage

log = logging.getLogger(__name__)

LOCAL_NAME, S3_NAME = ".lease", "_lease.json"
DEFAULT_TTL_SECONDS = 180.0  # longer than the storage retry window, so an outage alone does not lapse it
WAIT_POLL_SECONDS = 5.0


class LeaseHeldError(RuntimeError):
    """Another driver holds the output's lease."""


class LeaseLostError(RuntimeError):
    """This driver's lease lapsed or was taken over; it must stop writing."""


def lease_uri(out: str) -> str:
    return storage.join(out, S3_NAME if storage.is_s3(out) else LOCAL_NAME)


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _holder_record(token: str, ttl: float) -> dict[str, Any]:
    now = time.time()
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": _process_start(os.getpid()), "renewed": now, "expires": now + ttl, "ttl": ttl}


def _holder_gone(record: dict[str, Any]) -> bool:
    """The holder ran on this machine and its process no longer exists (or is another process now)."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return False
    started = _process_start(int(record["pid"]))
    return started is None or (record.get("pid_started") is not None
                               and abs(started - float(record["pid_started"])) > 1.0)


def describe_holder(record: dict[str, Any], out: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record.get("renewed", 0))))
    if storage.is_s3(out):
        left = float(record.get("expires", 0)) - time.time()
        seen = f"lease renewed {when}; it lapses in {left:.0f}s unless renewed again"
    else:
        seen = f"since {when}"
    return (f"{storage.redact(out)} is being written by another driver (host {record.get('host')}, "
            f"pid {record.get('pid')}, {seen}); pass --wait to wait for it, or use another --out")


class OutputLease:
    def __init__(self, out: str, ttl: float = DEFAULT_TTL_SECONDS, heartbeat: float | None = None) -> None:
        self.out, self.ttl = out.rstrip("/"), ttl
        self.heartbeat = heartbeat or max(1.0, ttl / 6)
        self.token = uuid.uuid4().hex
        self.uri = lease_uri(self.out)
        self._fd: int | None = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring
    def acquire(self, wait: bool = False, poll: float = WAIT_POLL_SECONDS) -> "OutputLease":
        announced = False
        while True:
            holder = self._try_acquire()
            if holder is None:
                log.info("lease on %s acquired", storage.redact(self.out))
                return self
            if not wait:
                raise LeaseHeldError(describe_holder(holder, self.out))
            if not announced:
                log.warning("%s; waiting", describe_holder(holder, self.out).split("; pass")[0])
                announced = True
            time.sleep(poll)

    def _try_acquire(self) -> dict[str, Any] | None:
        """None when acquired, else the holder's record."""
        return self._try_s3() if storage.is_s3(self.out) else self._try_local()

    def _try_local(self) -> dict[str, Any] | None:
        import fcntl

        os.makedirs(self.out, exist_ok=True)
        fd = os.open(self.uri, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_local(fd)
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_record(self.token, self.ttl)).encode(), 0)
        self._fd = fd
        return None

    def _try_s3(self) -> dict[str, Any] | None:
        body = json.dumps(_holder_record(self.token, self.ttl)).encode()
        etag = _put(self.uri, body, if_none_match=True)
        if etag is None:
            holder, held_etag = _get(self.uri)
            if holder is None:  # released between our put and our read: try again
                return self._try_s3()
            if time.time() < float(holder.get("expires", 0)) and not _holder_gone(holder):
                return holder
            log.warning("taking over the lapsed lease of host %s pid %s", holder.get("host"), holder.get("pid"))
            etag = _put(self.uri, body, if_match=held_etag)
            if etag is None:  # another driver took it over first
                return _get(self.uri)[0] or holder
        self._etag = etag
        self._thread = threading.Thread(target=self._beat, name="fea-lease-heartbeat", daemon=True)
        self._thread.start()
        return None

    # -- holding
    def _beat(self) -> None:
        last_renewal = time.monotonic()
        while not self._stop.wait(self.heartbeat):
            try:
                etag = _put(self.uri, json.dumps(_holder_record(self.token, self.ttl)).encode(), if_match=self._etag)
            except Exception as err:  # noqa: BLE001 - storage trouble: keep trying until the lease would lapse
                if time.monotonic() - last_renewal > self.ttl:
                    self._lost = f"could not renew it for {self.ttl:.0f}s ({type(err).__name__})"
                    return
                continue
            if etag is None:
                self._lost = "another driver took it over"
                return
            self._etag, last_renewal = etag, time.monotonic()

    def check(self) -> None:
        """Raise LeaseLostError once this driver may no longer write OUT."""
        if self._lost:
            raise LeaseLostError(f"lost the lease on {storage.redact(self.out)}: {self._lost}; "
                                 "stopped writing (rerunning the same command resumes from the last commit)")

    # -- releasing
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A renewal still in flight (a slow store) cannot outlive the delete below: its If-Match
            # names an object that is gone, so the store refuses it.
            self._thread.join(timeout=5)
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
        elif self._etag is not None and not self._lost:
            with contextlib.suppress(Exception):  # a lease left behind lapses on its own
                _delete(self.uri, self._etag)
        self._etag = None

    def __enter__(self) -> "OutputLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def verify(out: str, token: str) -> None:
    """Raise LeaseLostError unless `token` holds the lease on `out` (the writer's fence)."""
    uri = lease_uri(out.rstrip("/"))
    if storage.is_s3(uri):
        holder = _get(uri)[0]
    else:
        with open(uri, "rb") as f:
            holder = _parse(f.read())
    if not holder or holder.get("token") != token:
        raise LeaseLostError(f"{storage.redact(out)} is now written by another driver (host "
                             f"{(holder or {}).get('host')}); this job stopped writing")


# ---------------------------------------------------------------- plumbing
def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        return json.loads(data.decode()) if data else None
    except ValueError:
        return None


def _read_local(fd: int) -> dict[str, Any]:
    return _parse(os.pread(fd, 65536, 0)) or {}


def _client_call(method: str, uri: str, **kwargs: Any):
    fs, path = storage.fs_and_path(uri)
    bucket, _, key = path.partition("/")
    return fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)


def _precondition_failed(err: BaseException) -> bool:
    return storage._s3_error_status(err) in (412, 409) or isinstance(err, FileExistsError)


def _put(uri: str, body: bytes, if_none_match: bool = False, if_match: str | None = None) -> str | None:
    """The new ETag, or None when the condition failed."""
    from engine.data.retry import call

    conditions = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
    try:
        return call(lambda: _client_call("put_object", uri, Body=body, **conditions), "renewing the lease")["ETag"]
    except Exception as err:  # noqa: BLE001 - classified here
        if _precondition_failed(err):
            return None
        raise


def _get(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, ETag) of the lease object, read in one request so the two belong together."""
    from fsspec.asyn import sync

    from engine.data.retry import call

    fs, path = storage.fs_and_path(uri)
    bucket, _, key = path.partition("/")

    async def read() -> tuple[bytes, str]:
        reply = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        async with reply["Body"] as body:
            return await body.read(), reply["ETag"]

    try:
        data, etag = call(lambda: sync(fs.loop, read), "reading the lease")
    except FileNotFoundError:
        return None, None
    return _parse(data), etag


def _delete(uri: str, etag: str) -> None:
    _client_call("delete_object", uri, IfMatch=etag)
