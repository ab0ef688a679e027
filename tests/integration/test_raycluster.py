"""The private local Ray: its workers get the offline and S3 settings by inheritance from the raylet,
while the driver's own environment is left as it was."""
from __future__ import annotations

import os

import pytest

from engine.cluster.connect import _raylet_env


def test_workers_of_the_local_ray_inherit_the_worker_environment(ray_local, s3):
    ray = ray_local

    @ray.remote(num_cpus=0)
    class EnvProbe:
        def read(self, keys):
            return {k: os.environ.get(k) for k in keys}

    probe = EnvProbe.remote()
    try:
        seen = ray.get(probe.read.remote(["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AWS_ENDPOINT_URL",
                                          "RAY_worker_maximum_startup_concurrency"]))
    finally:
        ray.kill(probe)
    assert seen["HF_HUB_OFFLINE"] == "1" and seen["TRANSFORMERS_OFFLINE"] == "1"
    assert seen["AWS_ENDPOINT_URL"] == s3.env()["AWS_ENDPOINT_URL"]
    assert int(seen["RAY_worker_maximum_startup_concurrency"]) >= 4
    # the start-up setting was for the raylet only
    assert "RAY_worker_maximum_startup_concurrency" not in os.environ


def test_raylet_env_restores_the_driver_environment(monkeypatch):
    monkeypatch.setenv("FEA_TEST_KEPT", "driver")
    monkeypatch.delenv("FEA_TEST_ADDED", raising=False)
    with pytest.raises(RuntimeError):
        with _raylet_env({"FEA_TEST_KEPT": "raylet", "FEA_TEST_ADDED": "raylet"}):
            assert os.environ["FEA_TEST_KEPT"] == os.environ["FEA_TEST_ADDED"] == "raylet"
            raise RuntimeError("a failed ray.init")
    assert os.environ["FEA_TEST_KEPT"] == "driver" and "FEA_TEST_ADDED" not in os.environ
