"""A job's private local Ray is gone within 10 s of its driver, even when the driver is SIGKILLed.

Each test starts a real driver process with its own private Ray (and an actor, so the raylet has
workers and its agents), kills or ends it, and checks that no process of that Ray session remains.
Only processes these tests started are touched."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

DRIVER = """
import sys, time
import ray
from engine.cluster.connect import ensure_ray

ensure_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Busy:
    def ping(self):
        return "pong"

actor = Busy.remote()
assert ray.get(actor.ping.remote()) == "pong"
print(ray._private.worker._global_node.get_temp_dir_path(), flush=True)
if sys.argv[1] == "shutdown":
    ray.shutdown()
    print("shut down", flush=True)
time.sleep(600)
"""


def _start_driver(mode: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, mode], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    temp_dir = driver.stdout.readline().strip()
    assert temp_dir.startswith("/tmp/fea-ray-"), temp_dir
    return driver, temp_dir


def _session(driver: subprocess.Popen, temp_dir: str) -> list[psutil.Process]:
    from engine.cluster.watchdog import session_processes

    return list(session_processes(psutil.Process(driver.pid), temp_dir).values())


def _watchdog(driver: subprocess.Popen) -> psutil.Process:
    return next(p for p in psutil.Process(driver.pid).children()
                if "engine.cluster.watchdog" in " ".join(p.cmdline()))


def _remaining(processes: list[psutil.Process], temp_dir: str) -> list[str]:
    left = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in p.info["cmdline"] or []) and p not in left:
            left.append(p)
    return [f"{p.pid} {p.name()}" for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _wait_until_gone(processes: list[psutil.Process], temp_dir: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _remaining(processes, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _cleanup(processes: list[psutil.Process], driver: subprocess.Popen) -> None:
    """If a test fails, do not leave its processes behind."""
    for p in processes:
        try:
            p.kill()
        except psutil.Error:
            pass
    if driver.poll() is None:
        driver.kill()
    driver.wait(30)


def test_sigkill_of_the_driver_takes_its_private_ray_down(tmp_path):
    driver, temp_dir = _start_driver("hold")
    processes = _session(driver, temp_dir)
    try:
        names = {p.name() for p in processes}
        assert {"raylet", "gcs_server"} <= names and any("DashboardAgent" in n or "agent" in n for n in names), names
        watchdog = _watchdog(driver)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        left = _wait_until_gone(processes, temp_dir, 10.0)
        assert not left, f"still running 10 s after the driver was killed: {left}"
        assert not _wait_until_gone([watchdog], temp_dir, 10.0)  # and the watchdog itself is gone
    finally:
        _cleanup(processes, driver)


def test_a_driver_that_shuts_ray_down_leaves_no_watchdog_behind(tmp_path):
    driver, temp_dir = _start_driver("shutdown")
    processes = _session(driver, temp_dir)
    try:
        watchdog = _watchdog(driver)
        assert driver.stdout.readline().strip() == "shut down"
        assert not _wait_until_gone(processes, temp_dir, 10.0)
        assert not _wait_until_gone([watchdog], temp_dir, 10.0)
        assert driver.poll() is None  # the driver lives on; only its Ray and the watchdog ended
    finally:
        _cleanup(processes, driver)
