"""Object storage that goes away and comes back: a real SeaweedFS process, SIGKILLed and started again
on the same ports and data. Storage calls ride out an outage shorter than the retry window; a longer
one ends in one line naming the endpoint; a `fea synth` job survives a 30 s outage exactly once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.data.commits import commits_dir, committed_shard_uris, read_commits, resolve_shard_uri
from engine.data import retry, shards, storage
from engine.core.types import sha256_hex
from tests.support.processes import kill_driver_and_children
from tests.support.seaweed import SECRET_KEY, seaweed_process

pytestmark = pytest.mark.s3
BUCKET = "fea-outage"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def weed(monkeypatch):
    """A private S3 server this test may kill (the session's `s3` server stays up for the others)."""
    with seaweed_process() as process:
        for key, value in process.server.env().items():
            monkeypatch.setenv(key, value)
        process.server.make_bucket(BUCKET)
        yield process


def _restart_later(process, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), process.start()), daemon=True)
    thread.start()
    return thread


def test_calls_made_during_a_short_outage_complete_when_the_server_returns(weed, monkeypatch):
    monkeypatch.setenv(retry.WINDOW_ENV, "60")
    before = f"s3://{BUCKET}/outage/before.bin"
    storage.write_bytes(before, b"kept")
    weed.kill()
    restarted = _restart_later(weed, 6)
    started = time.monotonic()
    storage.write_bytes(f"s3://{BUCKET}/outage/during.bin", b"written during the outage")
    assert storage.write_once(f"s3://{BUCKET}/outage/commit.json", b"{}")
    waited = time.monotonic() - started
    restarted.join()
    assert waited >= 5, "the write should have waited for the server"
    assert storage.read_bytes(before) == b"kept"
    assert storage.read_bytes(f"s3://{BUCKET}/outage/during.bin") == b"written during the outage"
    assert not storage.write_once(f"s3://{BUCKET}/outage/commit.json", b"{}")  # still write-once
    assert storage.list_files(f"s3://{BUCKET}/outage") == [f"s3://{BUCKET}/outage/{n}"
                                                           for n in ("before.bin", "commit.json", "during.bin")]


def test_an_outage_longer_than_the_window_is_one_clear_error(weed, monkeypatch):
    monkeypatch.setenv(retry.WINDOW_ENV, "3")
    weed.kill()
    started = time.monotonic()
    with pytest.raises(retry.StorageUnavailableError) as caught:
        storage.write_bytes(f"s3://{BUCKET}/x/shard.tar", b"data")
    assert 2.5 <= time.monotonic() - started < 60
    message = str(caught.value)
    assert "\n" not in message and weed.server.endpoint in message and "rerunning" in message
    assert f"s3://{BUCKET}/x/shard.tar" in message and SECRET_KEY not in message


def test_permanent_errors_are_not_retried(weed, monkeypatch):
    monkeypatch.setenv(retry.WINDOW_ENV, "60")
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{BUCKET}/no/such/key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(Exception) as caught:
        storage.read_bytes(f"s3://{BUCKET}/no/such/key")
    assert not isinstance(caught.value, retry.StorageUnavailableError)
    assert time.monotonic() - started < 20


def test_a_parquet_stream_cut_by_an_outage_goes_on_after_the_rows_it_gave(weed, monkeypatch):
    """The server dies partway through reading a 105 MB Parquet file and comes back 8 s later: every row
    arrives once, in order. (s3fs reads ahead 50 MB, so the later rows still have to be fetched; without
    the resume, the read fails with EndpointConnectionError once the read-ahead data is used up.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv(retry.WINDOW_ENV, "60")
    ids = [f"row-{i:04d}" for i in range(150)]
    out = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ids, "blob": [os.urandom(700 * 1024) for _ in ids]}), out, row_group_size=10,
                   compression="none")
    uri = f"s3://{BUCKET}/stream/part-00000.parquet"
    storage.write_bytes(uri, out.getvalue().to_pybytes())
    seen, killed_at, restarted = [], None, None
    for row in shards.iter_parquet_rows(uri, batch_size=10, columns=["id", "blob"]):
        seen.append(row["id"])
        if len(seen) == 35:
            weed.kill()
            killed_at = time.monotonic()
            restarted = _restart_later(weed, 8)
    finished = time.monotonic()
    restarted.join()
    assert seen == ids
    assert finished - killed_at >= 7, "the read should have waited for the server"


# ---------------------------------------------------------------- a synthesis job through an outage
def _job_command(faces: Path, jsonl: Path, model: Path, out: str) -> list[str]:
    return [str(VENV_BIN / "fea"), "synth", "--input", str(jsonl), "--image-root", str(faces), "--out", out,
            "--model", str(model), "--backend", "hf", "--partition-size", "2", "--batch-size", "2",
            "--max-retries", "1", "--max-new-tokens", "16", "--progress", "log"]


def _subset(faces: Path, folder: Path, n: int) -> tuple[Path, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    lines = (faces / "samples.jsonl").read_text().splitlines()[:n]
    path = folder / "samples.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path, [json.loads(line)["id"] for line in lines]


def _commits(out: str) -> int:
    try:
        return len(storage.list_files(commits_dir(out), ".json"))
    except Exception:  # noqa: BLE001 - the server may be down while we look
        return 0


def _wait_for_commits(out: str, driver: subprocess.Popen, at_least: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if (count := _commits(out)) >= at_least:
            return count
        time.sleep(0.1)
    raise AssertionError(f"the job ended or stalled before {at_least} commits (rc={driver.poll()})")


def assert_exactly_once_and_intact(out: str, ids: list[str]) -> None:
    commits = read_commits(out)
    assert sum(c.inputs for c in commits) == len(ids)
    for commit in commits:
        for shard in commit.shards:
            data = storage.read_bytes(resolve_shard_uri(out, shard.uri))
            assert sha256_hex(data) == shard.sha256, f"{shard.uri} differs from its commit record"
    produced = [row["id"] for kind in ("accepted", "rejected")
                for uri in committed_shard_uris(out, kind, "parquet") for row in shards.iter_parquet_rows(uri)]
    assert sorted(produced) == sorted(ids), "an input is missing or appears twice"


def _run_driver(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_synth_rides_out_a_30s_storage_outage(weed, tiny_model, faces, tmp_path):
    jsonl, ids = _subset(faces, tmp_path / "in", 16)
    out = f"s3://{BUCKET}/synth-outage"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = _run_driver(_job_command(faces, jsonl, tiny_model, out), env)
    try:
        _wait_for_commits(out, driver, 2)
        weed.kill()
        time.sleep(30)
        assert driver.poll() is None, "the job ended during the outage"
        weed.start()
        stdout, stderr = driver.communicate(timeout=600)
    finally:
        kill_driver_and_children(driver.pid)
    assert driver.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["inputs"] == 16
    assert_exactly_once_and_intact(out, ids)


@pytest.mark.slow
def test_synth_ends_with_one_line_after_a_long_outage_and_the_rerun_completes(weed, tiny_model, faces, tmp_path):
    jsonl, ids = _subset(faces, tmp_path / "in", 16)
    out = f"s3://{BUCKET}/synth-long-outage"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[retry.WINDOW_ENV] = "8"
    command = _job_command(faces, jsonl, tiny_model, out)
    driver = _run_driver(command, env)
    try:
        _wait_for_commits(out, driver, 1)
        weed.kill()
        _, stderr = driver.communicate(timeout=300)
    finally:
        kill_driver_and_children(driver.pid)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert driver.returncode == 1, stderr[-3000:]
    assert lines[-1].startswith(f"fea synth: error: object storage at {weed.server.endpoint} was unreachable")
    assert "rerunning the same command resumes" in lines[-1]
    assert "Traceback" not in stderr and SECRET_KEY not in stderr

    weed.start()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_exactly_once_and_intact(out, ids)
