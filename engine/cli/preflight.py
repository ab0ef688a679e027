"""Checks a `fea` command runs on its inputs before it starts Ray or loads a model.

A bad path, an unreachable endpoint, refused credentials or an invalid setting should cost the user
one clear line, not a minute of start-up and a traceback. Every check raises `UsageError` with a
message that names the flag or setting and what is wrong with it; nothing here imports torch, ray
or vllm.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from engine.data import storage

SUPPORTED_SCHEMES = ("s3://",)


class UsageError(ValueError):
    """Input the command cannot work with; `fea` prints it as one line and exits with code 2."""


# ---------------------------------------------------------------- URIs
def check_uri(uri: str, what: str) -> str:
    """A local path or an s3://bucket[/prefix] URI; other schemes are refused by name."""
    text = str(uri or "").strip()
    if not text:
        raise UsageError(f"{what} is empty")
    if "://" in text and not text.startswith(SUPPORTED_SCHEMES):
        scheme = text.split("://", 1)[0]
        raise UsageError(f"{what} {storage.redact(text)}: unsupported scheme '{scheme}://' "
                         "(use a local path or s3://bucket/prefix)")
    if storage.is_s3(text) and not _bucket_and_key(text)[0]:
        raise UsageError(f"{what} {text}: no bucket name after s3://")
    return text


def _bucket_and_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(storage.S3_SCHEME):].partition("/")
    return bucket, key


# ---------------------------------------------------------------- object storage
@functools.lru_cache(maxsize=8)
def _probe_client(settings: tuple[tuple[str, str], ...]):
    """A botocore S3 client that fails fast: a preflight should not sit in the retry window."""
    import botocore.session
    from botocore.config import Config

    s = dict(settings)
    session = botocore.session.get_session()
    config = Config(connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"})
    return session.create_client("s3", endpoint_url=s.get("endpoint_url"), region_name=s.get("region") or "us-east-1",
                                 aws_access_key_id=s.get("key"), aws_secret_access_key=s.get("secret"),
                                 aws_session_token=s.get("token"), config=config)


def _list_prefix(uri: str, what: str) -> list[str]:
    """Up to two keys under an s3:// prefix; storage faults and refusals become UsageErrors."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, key = _bucket_and_key(uri)
    settings = storage.s3_settings()
    where = settings.get("endpoint_url") or "AWS S3"
    try:
        reply = _probe_client(tuple(sorted(settings.items()))).list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=2)
    except NoCredentialsError:
        raise UsageError(f"{what} {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                         "or use an instance role)") from None
    except ClientError as err:
        raise UsageError(f"{what} {uri}: {_refusal(err, bucket, where)}") from None
    except BotoCoreError as err:
        raise UsageError(f"{what} {uri}: cannot reach object storage at {storage.redact(where)} "
                         f"({type(err).__name__})") from None
    return [item["Key"] for item in reply.get("Contents", [])]


def _refusal(err, bucket: str, where: str) -> str:
    code = str(err.response.get("Error", {}).get("Code", ""))
    if code in ("NoSuchBucket", "404"):
        return f"bucket '{bucket}' does not exist at {storage.redact(where)}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken",
                "InvalidToken"):
        return f"{storage.redact(where)} refused the credentials ({code})"
    return f"{storage.redact(where)} answered {code or 'an error'}"


# ---------------------------------------------------------------- inputs
def check_input(uri: str | None, what: str) -> str:
    """An existing file or folder: a local path, or an s3:// key or prefix holding objects."""
    text = check_uri(uri or "", what)
    if storage.is_s3(text):
        if not _list_prefix(text.rstrip("/"), what):
            raise UsageError(f"{what} {text}: nothing stored under this key or prefix")
    elif not os.path.exists(text):
        raise UsageError(f"{what} {text}: no such file or folder")
    return text


def check_file(path: str | None, what: str) -> str:
    text = check_input(path, what)
    if not storage.is_s3(text) and not os.path.isfile(text):
        raise UsageError(f"{what} {text}: not a file")
    return text


def check_folder(path: str | None, what: str) -> str:
    text = check_input(path, what)
    if not storage.is_s3(text) and not os.path.isdir(text):
        raise UsageError(f"{what} {text}: not a folder")
    return text


def check_model(path: str | None, what: str = "--model", marker: str = "config.json") -> str:
    """A model (or adapter) folder: local or s3://, holding `marker`."""
    if not path:
        raise UsageError(f"{what} is required")
    text = check_folder(path, what)
    if storage.is_s3(text):
        found = bool(_list_prefix(storage.join(text, marker), what))
    else:
        found = os.path.isfile(os.path.join(text, marker))
    if not found:
        kind = "an adapter" if marker != "config.json" else "a model"
        raise UsageError(f"{what} {text}: not {kind} folder (no {marker})")
    return text


# ---------------------------------------------------------------- outputs
def check_output(uri: str | None, what: str = "--out", local_only: bool = False) -> str:
    """A place this command can write: a reachable bucket, or a local folder that is or can be made."""
    text = check_uri(uri or "", what)
    if storage.is_s3(text):
        if local_only:
            raise UsageError(f"{what} {text}: must be a local folder")
        _list_prefix(text.rstrip("/"), what)  # reachability, bucket and credentials
        return text
    path = Path(text).absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {text}: exists and is not a folder")
    _check_writable_parent(path, what, text)
    return text


def check_output_file(uri: str | None, what: str = "--out") -> str:
    """A file this command may create: its folder must be writable (or creatable)."""
    text = check_uri(uri or "", what)
    if storage.is_s3(text):
        _list_prefix(storage.parent(text), what)
        return text
    path = Path(text).absolute()
    if path.is_dir():
        raise UsageError(f"{what} {text}: is a folder, expected a file name")
    _check_writable_parent(path.parent, what, text)
    return text


def _check_writable_parent(path: Path, what: str, shown: str) -> None:
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{what} {shown}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {shown}: {existing} is not writable")


# ---------------------------------------------------------------- numbers and configs
def check_positive(value: Any, what: str) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{what} must be positive, got {value}")


def check_config_file(path: str | None, what: str = "--config") -> None:
    if path is not None and not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")


def one_line(message: str) -> str:
    """A multi-line message (a config error lists each field) folded into one line."""
    line = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            line += (" " if not line or line.endswith(":") else "; ") + part
    return line.strip()


# ---------------------------------------------------------------- per command
def check_synth(cfg) -> None:
    """A SynthConfig (flags applied) that `run_synth` can start on."""
    if not cfg.input:
        raise UsageError("--input (or input in the config) is required")
    if not cfg.out:
        raise UsageError("--out (or out in the config) is required")
    input_uri = check_input(cfg.input, "--input")
    if input_uri.rstrip("/").endswith((".jsonl", ".json")) and cfg.image_root:
        check_folder(cfg.image_root, "--image-root")
    backend = cfg.generation.backend
    if backend == "replay":
        check_file(cfg.generation.replay_path, "--replay-path")
    else:
        check_model(cfg.model.path, "--model")
    if cfg.model.adapter:
        check_model(cfg.model.adapter, "--adapter", marker="adapter_config.json")
    check_output(cfg.out, "--out")


def check_training(cfg) -> None:
    """An SFT/GRPO section (flags applied): sources that exist, a model folder, a local output folder."""
    if not cfg.data:
        raise UsageError("no training data (--data or data in the config)")
    for source in (*cfg.data, *cfg.eval_data):
        check_input(source.uri, "--data")
    check_model(cfg.model.path, "--model")
    if cfg.model.adapter:
        check_model(cfg.model.adapter, "model.adapter", marker="adapter_config.json")
    if not cfg.out:
        raise UsageError("--out (or out in the config) is required")
    check_output(cfg.out, "--out", local_only=True)


def check_eval(cfg) -> None:
    if not cfg.data:
        raise UsageError("--data (or data in the config) is required")
    check_input(cfg.data, "--data")
    if cfg.generation.backend == "replay":
        check_file(cfg.generation.replay_path, "generation.replay_path")
    else:
        check_model(cfg.model.path, "--model")
    if not cfg.out:
        raise UsageError("--out (or out in the config) is required")
    check_output(cfg.out, "--out", local_only=True)


def check_loop(cfg) -> None:
    check_model(cfg.base_model.path, "base_model.path")
    for uri in cfg.seed_data:
        check_input(uri, "seed_data")
    check_input(cfg.pool, "pool")
    check_input(cfg.test, "test")
    if cfg.image_root:
        check_folder(cfg.image_root, "image_root")
    check_output(cfg.out, "out")
    if cfg.work_dir:
        check_output(cfg.work_dir, "work_dir", local_only=True)


# ---------------------------------------------------------------- reporting a failure
# Errors that mean "the input or the request is wrong" (exit 2) and errors that mean "the world
# failed us, rerun later" (exit 1, no traceback either); anything else is a bug: exit 1 with a hint.
# Named by module so that this module imports none of them.
_USAGE_ERRORS = ("engine.cli.preflight:UsageError", "engine.core.config:ConfigError",
                 "engine.synth.input:JobMismatchError", "engine.synth.partition:InputChangedError",
                 "engine.loop.rounds:LoopStateError", "engine.data.lease:LeaseHeldError",
                 "engine.data.commits:ShardIntegrityError")
_OPERATIONAL_ERRORS = ("engine.data.retry:StorageUnavailableError", "engine.data.lease:LeaseLostError",
                       "engine.loop.watch:RetrainingError")


def _loaded(names: tuple[str, ...]) -> tuple[type, ...]:
    import sys

    found = []
    for name in names:
        module, _, cls = name.partition(":")
        if module in sys.modules and hasattr(sys.modules[module], cls):
            found.append(getattr(sys.modules[module], cls))
    return tuple(found)


def describe_failure(command: str, err: BaseException) -> tuple[int, str]:
    """(exit code, the one line to print) for an exception that ended `fea <command>`."""
    cause = getattr(err, "cause", None) or err  # a Ray task error carries the remote exception
    if isinstance(cause, _loaded(_USAGE_ERRORS)) or isinstance(err, _loaded(_USAGE_ERRORS)):
        return 2, f"fea {command}: error: {one_line(str(cause))}"
    if isinstance(cause, _loaded(_OPERATIONAL_ERRORS)) or isinstance(err, _loaded(_OPERATIONAL_ERRORS)):
        return 1, f"fea {command}: error: {one_line(str(cause))}"
    return 1, (f"fea {command}: error: {type(cause).__name__}: {one_line(str(cause))[:500]} "
               "(run again with --debug for the traceback)")
