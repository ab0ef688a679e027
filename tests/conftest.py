"""Shared fixtures: real components, started for the test session and stopped after it.

- `s3`: a real S3 server (SeaweedFS `weed mini`) on loopback; its settings are put in os.environ so
  that s3fs, polars, pyarrow, subprocesses and Ray workers all reach it.
- `ray_local`: a private local Ray cluster (never `ray stop`: that would stop other Rays here).
- `tiny_model`: the offline tiny Qwen2.5-VL, built once.
- `faces`: a small synthetic labelled face set in FEA-20K form, rendered once.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# No per-example deadline: on a loaded 2-core machine an example's time says more about the other
# jobs than about the code (Hypothesis' default of 200 ms fails tests that are correct).
settings.register_profile("fea", deadline=None)
settings.load_profile("fea")


@pytest.fixture(scope="session")
def s3():
    from tests.support.seaweed import seaweed_s3

    with seaweed_s3() as server, pytest.MonkeyPatch.context() as env:
        for key, value in server.env().items():
            env.setenv(key, value)
        server.make_bucket("fea-test")
        yield server


@pytest.fixture(scope="session")
def ray_local(s3):
    """Started after `s3` so the workers inherit the S3 settings."""
    import ray

    from engine.cluster.connect import ensure_ray

    started = ensure_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from engine.demo.tinymodel import build_tiny_model

    return Path(build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0))


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    """FEA-20K JSONL + images: DIR/samples.jsonl and DIR/images/."""
    from engine.demo.faces import write_face_set

    out = tmp_path_factory.mktemp("faces")
    write_face_set(out, n=24, seed=0)
    return out
