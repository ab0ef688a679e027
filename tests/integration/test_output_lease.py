"""One writer per output: the lease on OUT, locally (flock) and on a real S3 server (conditional
writes), and two real `fea synth` drivers started on the same OUT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from engine.data import lease as lease_mod
from engine.data.commits import read_commits, resolve_shard_uri
from engine.data import storage
from engine.data.lease import LeaseHeldError, LeaseLostError, OutputLease
from engine.core.types import sha256_hex
from tests.support.processes import kill_driver_and_children

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _out(where: str, tmp_path: Path) -> str:
    return f"s3://fea-test/lease-{uuid.uuid4().hex[:8]}" if where == "s3" else str(tmp_path / "out")


WHERE = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture
def storage_for(request):
    """`s3` started only for the s3 cases."""
    def use(where: str) -> None:
        if where == "s3":
            request.getfixturevalue("s3")
    return use


@pytest.mark.parametrize("where", WHERE)
def test_a_second_holder_is_refused_until_the_first_releases(where, storage_for, tmp_path):
    storage_for(where)
    out = _out(where, tmp_path)
    first = OutputLease(out).acquire()
    try:
        with pytest.raises(LeaseHeldError) as refused:
            OutputLease(out).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "--wait" in message and "\n" not in message
        lease_mod.verify(out, first.token)
        with pytest.raises(LeaseLostError):
            lease_mod.verify(out, "someone-else")
    finally:
        first.release()
    with OutputLease(out).acquire() as second:
        lease_mod.verify(out, second.token)


@pytest.mark.parametrize("where", WHERE)
def test_wait_takes_the_lease_once_the_holder_lets_go(where, storage_for, tmp_path):
    storage_for(where)
    out = _out(where, tmp_path)
    first = OutputLease(out).acquire()
    threading.Timer(1.5, first.release).start()
    started = time.monotonic()
    with OutputLease(out).acquire(wait=True, poll=0.2):
        assert time.monotonic() - started >= 1.0


HOLD = """
import sys, time
from engine.data.lease import OutputLease
OutputLease(sys.argv[1], ttl=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("where", WHERE)
def test_a_killed_holder_does_not_block_the_next_driver(where, storage_for, tmp_path):
    storage_for(where)
    out = _out(where, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out, "600"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeldError):
            OutputLease(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLease(out).acquire():  # at once: the holder's process is gone
        pass


@pytest.mark.s3
def test_an_s3_lease_of_another_machine_lapses_only_after_its_ttl(s3, tmp_path):
    out = _out("s3", tmp_path)
    record = {"token": "t", "host": "another-machine", "pid": 1, "renewed": time.time(), "expires": time.time() + 60}
    storage.write_json(lease_mod.lease_uri(out), record)
    with pytest.raises(LeaseHeldError, match="another-machine"):
        OutputLease(out).acquire()
    storage.write_json(lease_mod.lease_uri(out), {**record, "expires": time.time() - 1})
    with OutputLease(out).acquire() as taken:
        assert json.loads(storage.read_text(lease_mod.lease_uri(out)))["token"] == taken.token


@pytest.mark.s3
def test_the_heartbeat_renews_and_notices_a_takeover(s3, tmp_path):
    out = _out("s3", tmp_path)
    held = OutputLease(out, ttl=30, heartbeat=0.3).acquire()
    try:
        first = json.loads(storage.read_text(lease_mod.lease_uri(out)))
        time.sleep(1.2)
        renewed = json.loads(storage.read_text(lease_mod.lease_uri(out)))
        assert renewed["token"] == held.token and renewed["expires"] > first["expires"]
        held.check()
        storage.write_json(lease_mod.lease_uri(out), {**renewed, "token": "intruder"})  # its ETag changes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                held.check()
            except LeaseLostError as lost:
                assert "another driver took it over" in str(lost)
                break
            time.sleep(0.1)
        else:
            pytest.fail("the holder never noticed it lost the lease")
    finally:
        held.release()
    assert json.loads(storage.read_text(lease_mod.lease_uri(out)))["token"] == "intruder"  # not deleted by the loser


# ---------------------------------------------------------------- two real drivers on one OUT
def _subset(faces: Path, folder: Path, n: int) -> tuple[Path, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    lines = (faces / "samples.jsonl").read_text().splitlines()[:n]
    (folder / "samples.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder / "samples.jsonl", [json.loads(line)["id"] for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_two_drivers_on_one_output_exactly_one_writes(where, storage_for, tiny_model, faces, tmp_path):
    storage_for(where)
    out = _out(where, tmp_path)
    jsonl, ids = _subset(faces, tmp_path / "in", 12)
    command = [str(VENV_BIN / "fea"), "synth", "--input", str(jsonl), "--image-root", str(faces), "--out", out,
               "--model", str(tiny_model), "--backend", "hf", "--partition-size", "2", "--batch-size", "2",
               "--max-retries", "1", "--max-new-tokens", "16", "--progress", "off"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _lease_present(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        first_out, first_err = first.communicate(timeout=600)
    finally:
        kill_driver_and_children(first.pid)
    assert first.returncode == 0, first_err[-3000:]
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert lines[0].startswith("fea synth: error: ") and "being written by another driver" in lines[0]
    commits = read_commits(out)
    assert sum(c.inputs for c in commits) == len(ids) == json.loads(first_out)["inputs"]
    for commit in commits:
        for shard in commit.shards:
            assert sha256_hex(storage.read_bytes(resolve_shard_uri(out, shard.uri))) == shard.sha256


def _lease_present(out: str) -> bool:
    uri = lease_mod.lease_uri(out)
    if storage.is_s3(out):
        return storage.exists(uri)
    return os.path.exists(uri) and os.path.getsize(uri) > 0
