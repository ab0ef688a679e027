"""The vLLM plugin that makes vLLM's processes pause between polls of their shared-memory queues: vLLM
finds it through its entry point and loads it, and it takes effect only when asked to."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm

PROBE = """
import json, time
from vllm.distributed import utils
from vllm.distributed.device_communicators import shm_broadcast
from vllm.plugins import load_general_plugins

load_general_plugins()  # what vLLM's engine-core and worker processes call at start-up
started = time.perf_counter()
for _ in range(20):
    shm_broadcast.sched_yield()
print(json.dumps({"replaced": shm_broadcast.sched_yield is not utils.sched_yield,
                  "seconds": time.perf_counter() - started}))
"""


def _probe(**env: str) -> dict:
    pytest.importorskip("vllm")
    settings = {k: v for k, v in os.environ.items() if k != "FEA_VLLM_POLL_SLEEP_US"} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=settings, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_vllm_loads_the_plugin_and_its_queue_readers_sleep_between_polls():
    result = _probe(FEA_VLLM_POLL_SLEEP_US="5000")
    assert result["replaced"]
    assert result["seconds"] >= 20 * 0.005  # a sleep never ends early


def test_without_the_setting_vllm_keeps_its_own_polling():
    assert not _probe()["replaced"]
    assert not _probe(FEA_VLLM_POLL_SLEEP_US="0")["replaced"]
