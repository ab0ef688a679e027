"""The S3 connection settings, read from the standard AWS_* environment variables, and the redaction
that keeps credentials out of logs, manifests and error lines (`redact`).

Kept apart from storage.py so that the retry layer, which storage uses, can name an endpoint safely.
"""
from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# A credential's name: one of these words as a whole segment of the key ("aws_secret_access_key",
# "session-token", "storage.key"), so settings like "max_new_tokens" stay readable.
_SECRET_KEY_PATTERN = re.compile(r"(^|[_.\-])(secret|password|passwd|token|credentials?|access_key|key)([_.\-]|$)",
                                 re.IGNORECASE)
_REDACTED = "***"


def s3_settings() -> dict[str, str]:
    """The S3 connection settings from the environment (values may be secret: never log this)."""
    env = os.environ
    settings = {
        "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL", ""),
        "key": env.get("AWS_ACCESS_KEY_ID", ""),
        "secret": env.get("AWS_SECRET_ACCESS_KEY", ""),
        "token": env.get("AWS_SESSION_TOKEN", ""),
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", ""),
    }
    return {k: v for k, v in settings.items() if v}


def redact(value: Any) -> Any:
    """A copy of a URI, mapping or list that is safe to log: credentials replaced by '***'.

    URIs lose user:password@ and secret-looking query parameters; mapping values whose key looks
    like a credential (secret, token, password, access key ...) are replaced.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return _redact_uri(value)
    if isinstance(value, dict):
        return {k: (_REDACTED if _SECRET_KEY_PATTERN.search(str(k)) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_uri(text: str) -> str:
    if "://" not in text:
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = _REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}={_REDACTED}" if _SECRET_KEY_PATTERN.search(k) or k.lower().startswith("x-amz-") else pair
        for pair in parts.query.split("&") if pair
        for k in [pair.split("=", 1)[0]]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
