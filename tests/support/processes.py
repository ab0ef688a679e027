"""Killing a driver the hard way, as a lost machine would, without leaving its private Ray behind."""
from __future__ import annotations

import contextlib
import os
import signal


def kill_driver_and_children(pid: int) -> None:
    """SIGKILL `pid` (started with start_new_session=True), its process group and every process it
    started, e.g. the Ray it started for itself. Only processes this test started are touched."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
