"""`ray up` -> `ray job submit -- fea synth` -> `ray down`, with the local provider on this machine.

The cluster's head is reached over ssh (a private sshd on 127.0.0.1, see tests/support/local_cluster.py):
the same launcher path as a cloud cluster, minus the cloud. The job is a real synthesis run (hf backend,
tiny model, synthetic faces) whose inputs reach the head through the cluster file's file_mounts.

Other Ray instances share this machine, and `ray down` always runs `ray stop` on the head. The test
proves that stop is confined to the cluster: a process named like a raylet, started outside the
cluster's PID namespace, must survive `ray down`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.local_cluster import (REPO_ROOT, missing_tools, pid_namespace_available, start_cluster_sshd,
                                         stop_cluster_sshd)

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
N_FACES = 24  # the `faces` fixture
PARTITION_SIZE = 8
SSH_CONTROL_PERSIST_S = 10  # Ray's command runner: ssh -o ControlPersist=10s


def _run(cmd: list[str], env: dict[str, str], timeout: int, log: Path) -> subprocess.CompletedProcess:
    """Run a launcher command, keeping its whole output in `log` and its tail in failures."""
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    log.write_text(done.stdout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:3])} exited with {done.returncode}; end of {log}:\n"
                             f"{done.stdout[-4000:]}")
    return done


def _processes_mentioning(text: str) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if text in cmdline:
            found.append(f"{proc.info['pid']} {cmdline[:160]}")
    return found


@pytest.fixture
def cluster(faces, tiny_model):
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (.ci/run installs openssh-server and rsync)")
    if not pid_namespace_available():
        pytest.skip("cannot create a PID namespace here: `ray down` would `ray stop` every Ray on the machine")
    # Short path: Ray's socket paths under the temp dir have a length limit.
    workdir = Path(tempfile.mkdtemp(prefix="fea-up-", dir="/tmp"))
    started = None
    try:
        inputs = workdir / "inputs"
        shutil.copytree(faces, inputs / "faces")
        shutil.copytree(tiny_model, inputs / "model")
        started = start_cluster_sshd(workdir, inputs)
        yield started
    finally:
        if started is not None:
            stop_cluster_sshd(started)
        shutil.rmtree(workdir, ignore_errors=True)


def test_ray_up_submit_synth_and_down(cluster):
    env = cluster.cli_env()
    logs = cluster.workdir / "logs"
    logs.mkdir()
    # A stand-in for another Ray on this machine: `ray stop` matches processes named "raylet".
    decoy_exe = cluster.workdir / "raylet"
    shutil.copy(shutil.which("sleep"), decoy_exe)
    decoy = subprocess.Popen([str(decoy_exe), "600"])
    timings: dict[str, float] = {}
    out = cluster.workdir / "synth-out"
    remote_inputs = cluster.home / "fea-inputs"  # where file_mounts put the inputs on the head
    try:
        start = time.monotonic()
        _run([RAY, "up", "-y", "--no-config-cache", str(cluster.cluster_file)], env, 600, logs / "up.log")
        timings["ray up"] = time.monotonic() - start
        assert (cluster.home / "ray_bootstrap_config.yaml").is_file(), "ray up left no bootstrap config on the head"
        assert (remote_inputs / "faces" / "samples.jsonl").is_file(), "file_mounts did not reach the head"

        start = time.monotonic()
        submission_id = f"fea-synth-{cluster.workdir.name}"
        _run([RAY, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
              "--working-dir", str(REPO_ROOT), "--",
              "fea", "synth", "--input", str(remote_inputs / "faces" / "samples.jsonl"),
              "--image-root", str(remote_inputs / "faces"), "--model", str(remote_inputs / "model"),
              "--out", str(out), "--backend", "hf", "--generators", "1", "--max-retries", "1",
              "--max-new-tokens", "32", "--batch-size", "8", "--partition-size", str(PARTITION_SIZE),
              "--progress", "log"],
             env, 600, logs / "job.log")
        timings["job"] = time.monotonic() - start
        from ray.job_submission import JobStatus, JobSubmissionClient

        assert JobSubmissionClient(cluster.dashboard_url).get_job_status(submission_id) == JobStatus.SUCCEEDED

        # The job ran on the cluster (its driver joined it), not on a Ray of its own.
        from ray.util.state import list_actors

        names = [a.name for a in list_actors(address=cluster.dashboard_url, limit=1000)]
        assert any(name.startswith("fea-") and "-generator-" in name for name in names), names

        commits = sorted((out / "commits").glob("*.json"))
        assert len(commits) == -(-N_FACES // PARTITION_SIZE), commits
        summary = json.loads((out / "summary.json").read_text())
        assert summary["inputs"] == N_FACES
        assert summary["accepted"] + summary["rejected"] + summary["quarantined"] == N_FACES
        committed = [json.loads(c.read_text()) for c in commits]
        assert sum(c["inputs"] for c in committed) == N_FACES, committed
        for kind in ("accepted", "rejected"):
            shards = [s for c in committed for s in c["shards"] if s["kind"] == kind and s["format"] == "parquet"]
            assert sum(s["rows"] for s in shards) == summary[kind], (kind, shards)
            for shard in shards:
                assert (out / shard["uri"]).is_file(), shard  # an absolute uri replaces `out`
    finally:
        start = time.monotonic()
        down = subprocess.run([RAY, "down", "-y", str(cluster.cluster_file)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
        timings["ray down"] = time.monotonic() - start
        (logs / "down.log").write_text(down.stdout)
        decoy_alive = decoy.poll() is None
        decoy.kill()
        decoy.wait()
        print("local cluster timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    assert down.returncode == 0, down.stdout[-4000:]
    assert "Stopped all" in down.stdout or "Did not find any active Ray processes" in down.stdout, down.stdout[-2000:]
    assert decoy_alive, "ray down stopped a Ray-named process outside the cluster"
    stop_cluster_sshd(cluster)
    # The launcher's ssh connection masters linger for their ControlPersist time (10 s) after last use.
    deadline = time.monotonic() + SSH_CONTROL_PERSIST_S + 5
    while (leftovers := _processes_mentioning(str(cluster.workdir))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers, f"processes of the cluster outlived it: {leftovers}"
