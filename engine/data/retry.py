"""Riding out object storage faults: a restarted S3 server or a dropped connection should cost a job
some seconds, not its life.

Two layers. botocore's own retries ("standard" mode) absorb single dropped requests inside each
call. Around each storage operation, `call` retries transient faults (no connection, timeouts, 5xx,
throttling) with backoff for a window of FEA_STORAGE_RETRY_SECONDS (120 s by default); after that it
raises `StorageUnavailableError`, one line that says what was unreachable. Every operation retried
here is safe to repeat: whole-object puts, reads, listings, deletes, and the write-once commit
(a repeat of a put that did land is refused with 412 and reads as "already committed").
"""
from __future__ import annotations

import os
import random
import time
from typing import Callable, Iterator, TypeVar

from engine.data.credentials import redact, s3_settings

T = TypeVar("T")

WINDOW_ENV = "FEA_STORAGE_RETRY_SECONDS"
DEFAULT_WINDOW_SECONDS = 120.0
_FIRST_PAUSE, _MAX_PAUSE = 0.5, 5.0
# Status codes and error codes S3 servers use for "try again".
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "OperationAborted"}


class StorageUnavailableError(RuntimeError):
    """Object storage stayed unreachable for the whole retry window."""


def window_seconds() -> float:
    raw = os.environ.get(WINDOW_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_WINDOW_SECONDS
    except ValueError:
        raise ValueError(f"{WINDOW_ENV}={raw!r} is not a number of seconds") from None


def botocore_config_kwargs() -> dict:
    """s3fs `config_kwargs`: botocore's standard retry mode and timeouts that notice a dead server."""
    return {"retries": {"mode": "standard", "total_max_attempts": 4}, "connect_timeout": 5, "read_timeout": 60}


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_transient(err: BaseException) -> bool:
    """True for faults that a later try may not meet: no connection, a timeout, a 5xx, throttling."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, ReadTimeoutError

    for cause in _chain(err):
        if isinstance(cause, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ConnectionError,
                              TimeoutError)):
            return True
        if type(cause).__name__ in ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
                                    "FSTimeoutError"):
            return True
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            return status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES
    return False


def endpoint() -> str:
    return redact(s3_settings().get("endpoint_url", "AWS S3"))


def call(operation: Callable[[], T], what: str) -> T:
    """`operation()`, retried on transient faults for the window; `what` names it for the error line."""
    backoff = _Backoff(what)
    while True:
        try:
            return operation()
        except Exception as err:  # noqa: BLE001 - only transient faults are retried
            backoff.wait_or_raise(err)


def resumed_on_s3(uri: str, read_from: Callable[[int], Iterator[T]]) -> Iterator[T]:
    """The items of `read_from(0)`, a stream read from `uri`. On S3, when a transient fault breaks the
    stream, `read_from(n)` goes on after the n items already given (as `retried_on_s3` does for whole
    calls); a local file is read once."""
    if not os.fspath(uri).startswith("s3://"):
        return read_from(0)
    return resumed(read_from, f"reading {_shown(uri)}")


def resumed(read_from: Callable[[int], Iterator[T]], what: str) -> Iterator[T]:
    """The items of `read_from(0)`. When a transient fault breaks the stream, `read_from(n)` goes on after
    the n items already given, with backoff as in `call`; the window starts again once items flow."""
    given, backoff = 0, _Backoff(what)
    while True:
        at_start = given
        try:
            for item in read_from(given):
                yield item
                given += 1
            return
        except Exception as err:  # noqa: BLE001 - only transient faults are retried
            if given > at_start:
                backoff = _Backoff(what)
            backoff.wait_or_raise(err)


class _Backoff:
    """Pauses between tries of one operation, doubling up to _MAX_PAUSE, for at most the window."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.window = window_seconds()
        self.deadline = time.monotonic() + self.window
        self.pause = _FIRST_PAUSE

    def wait_or_raise(self, err: Exception) -> None:
        """Called in an `except` block: a fault that is not transient, or past the window, is raised."""
        if not is_transient(err):
            raise err
        if time.monotonic() + self.pause > self.deadline:
            raise StorageUnavailableError(
                f"object storage at {endpoint()} was unreachable for {self.window:.0f}s ({self.what}: "
                f"{type(err).__name__}); what was committed is kept, and rerunning the same command "
                "resumes from there") from err
        time.sleep(self.pause * random.uniform(0.8, 1.2))
        self.pause = min(self.pause * 2, _MAX_PAUSE)


def retried_on_s3(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator for storage functions whose first argument is a URI: s3:// calls go through `call`
    (local disk errors such as a full disk are not transient and are raised at once)."""
    import functools

    def wrap(function: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(function)
        def retrying(uri, *args, **kwargs):
            if not os.fspath(uri).startswith("s3://"):
                return function(uri, *args, **kwargs)
            return call(lambda: function(uri, *args, **kwargs), f"{what} {_shown(uri)}")
        return retrying
    return wrap


def _shown(uri) -> str:
    return redact(os.fspath(uri))
