"""engine.data.storage on local disk: atomic writes, write-once commits, listings, redaction."""
from __future__ import annotations

import multiprocessing
import os
import threading


from engine.data import storage


def test_write_once_creates_then_never_overwrites(tmp_path):
    target = tmp_path / "commits" / "part-00000.json"
    assert storage.write_once(target, b"first") is True
    assert storage.write_once(target, b"second") is False
    assert target.read_bytes() == b"first"
    # No temp files are left behind by either call.
    assert os.listdir(target.parent) == ["part-00000.json"]


def test_write_once_from_threads_has_exactly_one_winner(tmp_path):
    target = str(tmp_path / "race.json")
    barrier = threading.Barrier(8)
    results: dict[int, bool] = {}

    def contend(i: int) -> None:
        barrier.wait()
        results[i] = storage.write_once(target, f"writer-{i}".encode() * 1000)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert open(target, "rb").read() == f"writer-{winners[0]}".encode() * 1000


def _contend_in_process(target: str, i: int, barrier, queue) -> None:
    barrier.wait()
    queue.put((i, storage.write_once(target, f"process-{i}".encode())))


def test_write_once_from_processes_has_exactly_one_winner(tmp_path):
    target = str(tmp_path / "race.json")
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_contend_in_process, args=(target, i, barrier, queue)) for i in range(3)]
    for p in procs:
        p.start()
    outcomes = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
    winners = [i for i, won in outcomes.items() if won]
    assert len(winners) == 1
    assert open(target, "rb").read() == f"process-{winners[0]}".encode()


def test_write_bytes_replaces_atomically_and_lists(tmp_path):
    storage.write_bytes(tmp_path / "a" / "x.parquet", b"1")
    storage.write_bytes(tmp_path / "a" / "x.parquet", b"22")
    storage.write_bytes(tmp_path / "a" / "y.json", b"{}")
    storage.write_bytes(tmp_path / "a" / "sub" / "z.parquet", b"3")
    assert storage.read_bytes(tmp_path / "a" / "x.parquet") == b"22"
    folder = str(tmp_path / "a")
    assert storage.list_files(folder) == [f"{folder}/x.parquet", f"{folder}/y.json"]
    assert storage.list_files(folder, suffix=".parquet") == [f"{folder}/x.parquet"]
    assert storage.list_files(folder, suffix=".parquet", recursive=True) == [
        f"{folder}/sub/z.parquet", f"{folder}/x.parquet"]
    assert storage.list_files(str(tmp_path / "missing")) == []
    assert storage.exists(f"{folder}/y.json") and not storage.exists(f"{folder}/nope.json")


def test_join_and_parent():
    assert storage.join("s3://b/p/", "commits", "part-00001.json") == "s3://b/p/commits/part-00001.json"
    assert storage.join("/data/out", "/samples/") == "/data/out/samples"
    assert storage.parent("s3://b/p/x.jsonl") == "s3://b/p"


def test_materialize_returns_local_paths_unchanged(tmp_path):
    assert storage.materialize(str(tmp_path)) == str(tmp_path)


def test_redact_hides_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    options = storage.polars_storage_options("s3://bucket/x.parquet")
    assert options["aws_secret_access_key"] == "very-secret-value" and options["aws_allow_http"] == "true"
    shown = repr(storage.redact({"storage": options, "uri": "s3://user:pw@bucket/k?X-Amz-Signature=abc&part=1"}))
    assert "very-secret-value" not in shown and "AKIDEXAMPLE" not in shown
    assert "pw@" not in shown and "abc" not in shown and "part=1" in shown
    assert "http://127.0.0.1:9000" in shown  # the endpoint is not a secret and helps debugging
    s3fs_style = storage.redact({"key": "AKIDEXAMPLE", "secret": "s3cr3t", "token": "t0k",
                                 "generation.max_new_tokens": 256, "max_num_seqs": 64})
    assert s3fs_style["key"] == s3fs_style["secret"] == s3fs_style["token"] == "***"
    assert s3fs_style["generation.max_new_tokens"] == 256 and s3fs_style["max_num_seqs"] == 64  # settings stay readable
    assert storage.redact("s3://b/k?access_token=abc&part=2") == "s3://b/k?access_token=***&part=2"
    assert storage.polars_storage_options("/local/x.parquet") is None
