"""Connecting to Ray: an existing cluster when RAY_ADDRESS says so, else a private local one.

A private local Ray (its own temp dir) keeps clear of any other Ray on the same machine; we never
call `ray stop`, which would stop every Ray here.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

# Environment the workers need: offline model loading, and the S3 settings of the driver.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP", "HF_HOME", "FEA_CACHE_DIR",
                  "FEA_STORAGE_RETRY_SECONDS")


def worker_env() -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update({k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ})
    return env


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Start or join Ray; returns True when this call started it (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": worker_env()}, log_to_driver=True)
    else:
        temp_dir = tempfile.mkdtemp(prefix="fea-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
        # No runtime_env here: the workers of a local Ray inherit the raylet's environment, set while it
        # starts. A runtime_env would make every actor wait for a fresh worker set up by Ray's runtime-env
        # agent (0.8-0.9 s each on 2 cores) instead of taking one of the workers Ray prestarts (0.15-0.45 s).
        with _raylet_env(_local_raylet_env()):
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _temp_dir=temp_dir, log_to_driver=False,
                     _system_config={"max_direct_call_object_size": _LOCAL_INLINE_BYTES})
        from engine.cluster.watchdog import spawn

        spawn(temp_dir)  # takes this Ray down with the driver, even when the driver is killed
    return True


# On one machine, a call's arguments up to this size travel inside the call, copied once, instead of
# through the shared-memory object store (create, copy, seal, pin, release: several round trips to the
# raylet per call). A generation batch with its images (about 0.5 MB) and a finished partition (2 MB)
# are then passed inline (the replay pipeline: 9% faster on average over five alternating pairs, within
# a wide spread; bench/results/analyses.jsonl). Ray's default, 100 KiB, suits a cluster, where the object
# store also moves data between nodes.
_LOCAL_INLINE_BYTES = 8 * 1024 * 1024

# Ray starts at most one worker process per CPU at a time, so on a 2-core machine a job's generator,
# filter and writer actors would start one after another; the raylet reads this when it starts.
_LOCAL_STARTUP_CONCURRENCY = 4
_STARTUP_ENV = "RAY_worker_maximum_startup_concurrency"


def _local_raylet_env() -> dict[str, str]:
    env = worker_env()
    env.setdefault(_STARTUP_ENV, os.environ.get(_STARTUP_ENV)
                   or str(max(_LOCAL_STARTUP_CONCURRENCY, os.cpu_count() or 1)))
    return env


@contextlib.contextmanager
def _raylet_env(env: dict[str, str]) -> Iterator[None]:
    """Set `env` while a local Ray starts (its raylet and workers inherit it), then restore the driver's."""
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
