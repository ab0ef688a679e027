"""A vLLM plugin (entry point group `vllm.general_plugins`), which vLLM loads in each of its processes.

vLLM's engine-core process and its worker pass every step through shared-memory queues, and a reader
waits for the next message by polling in a loop that calls `sched_yield` between polls, for up to one
second after the last message. During generation a message comes every step, so both processes poll
for the whole run. On a GPU machine that costs a spare core. On a CPU machine the polling engine core
takes its time from the cores doing the compute: on 2 cores, two generators, each bound to its own
core, ran only 1.3x as fast as one.

With `FEA_VLLM_POLL_SLEEP_US=N` (the vllm backend sets 500 on CPU unless the user has set it), the
loop sleeps N microseconds between polls instead: a step may start up to that much later, against
tens of milliseconds for a decode step on CPU. In the synthesis bench on 2 cores, 500 was fastest
with 2 generators (100: 16% slower, 1,000 and 2,000: 4-7%), and 300 and 500 were alike with one.
Waiting on the queue's notification socket instead was tried and lost wake-ups (the engine hung).
vLLM 0.32 has no setting for this.
"""
from __future__ import annotations

import os
import time

ENV = "FEA_VLLM_POLL_SLEEP_US"
CPU_DEFAULT_US = "500"  # what the vllm backend sets on CPU


def register() -> None:
    """Called by vLLM at start-up in each of its processes (engine core, workers, the caller's)."""
    sleep_us = int(os.environ.get(ENV) or 0)
    if sleep_us <= 0:
        return
    from vllm.distributed.device_communicators import shm_broadcast

    def poll_pause() -> None:
        time.sleep(sleep_us / 1e6)

    shm_broadcast.sched_yield = poll_pause  # the module's own name for the pause between polls
