"""A watchdog that takes a job's private local Ray down with its driver, however the driver ends.

`ray.shutdown()` stops a private Ray when the driver exits normally. A driver that is SIGKILLed (or
dies of the OOM killer) leaves Ray's processes behind; the gcs and raylet notice and exit, but
the raylet's DashboardAgent and RuntimeEnvAgent, once orphaned, keep running. So next to each private
Ray runs this small process (its own session, so signals to the driver's group miss it): it keeps a
list of that Ray's processes (the driver's children started with its private temp dir, and all their
descendants) and, once the driver is gone, stops the ones still there: SIGTERM, then SIGKILL. It
touches nothing else, and it exits by itself once the driver has shut its Ray down.

    python -m engine.cluster.watchdog DRIVER_PID TEMP_DIR
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_SECONDS = 0.5
TERM_GRACE_SECONDS = 2.0


def spawn(temp_dir: str) -> subprocess.Popen:
    """Start the watchdog for this process's private Ray in `temp_dir`."""
    return subprocess.Popen([sys.executable, "-m", "engine.cluster.watchdog", str(os.getpid()), temp_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _uses(process, temp_dir: str) -> bool:
    import psutil

    try:
        return any(temp_dir in arg for arg in process.cmdline())
    except psutil.Error:
        return False


def _with_descendants(processes) -> dict:
    import psutil

    found = {}
    for process in processes:
        try:
            family = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        found.update({p.pid: p for p in family})
    return found


def session_processes(driver, temp_dir: str) -> dict:
    """pid -> psutil.Process of the Ray that `driver` started in `temp_dir`."""
    import psutil

    try:
        roots = [p for p in driver.children() if p.pid != os.getpid() and _uses(p, temp_dir)]  # not itself
    except psutil.Error:
        return {}
    return _with_descendants(roots)


def stop(processes: dict) -> None:
    import psutil

    alive = [p for p in processes.values() if _alive(p)]
    for process in alive:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=TERM_GRACE_SECONDS)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=TERM_GRACE_SECONDS)


def watch(driver_pid: int, temp_dir: str) -> None:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    tracked: dict = {}
    while _alive(driver):
        tracked.update(session_processes(driver, temp_dir))
        if not any(_alive(p) for p in tracked.values()):
            return  # the driver shut its Ray down itself (it was started before this watchdog)
        time.sleep(POLL_SECONDS)
    # psutil.Process objects remember their start time, so a reused pid is never mistaken for ours
    tracked.update(_with_descendants([p for p in tracked.values() if _alive(p)]))
    stop(tracked)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
