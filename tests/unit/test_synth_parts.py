"""Synthesis pieces without Ray: partitions, outcomes, judging, the partition writer, replay, job identity."""
from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.data.commits import existing_shards, read_commits
from engine.data import shards
from engine.backends.replay import ReplayBackend, load_store
from engine.core.config import ConfigError, GenerationConfig, SynthConfig, VerifierConfig
from engine.synth.judge import Gold, judge
from engine.synth.partition import (InputChangedError, Outcome, PartitionResult, cut_partitions, totals,
                              write_partition)
from engine.synth.progress import Counts, Progress
from engine.synth.input import JobMismatchError, default_job_id, open_job, resolve_config
from engine.synth.scheduler import RequestQueue
from engine.core.types import Attempt, GenerationRequest, QuarantineRecord, Sample, SamplingParams, sha256_hex

GOOD = ("<think>The inner brows are raised (AU1) and the brows are lowered (AU4), the lip corners are "
        "pulled down (AU15), a downcast look typical of sadness.</think><answer>sadness</answer>")
BAD = "<think>A face.</think><answer>happiness</answer>"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buf, format="PNG")
    return buf.getvalue()


def sample(i: int) -> Sample:
    image = png()
    return Sample(id=f"s{i}", dataset="SynthFaces", image=image, image_sha256=sha256_hex(image),
                  image_path=f"images/s{i}.png", question="What is the emotion of this face?",
                  aus=("AU1", "AU4", "AU15"), labels=("sadness",))


def attempt(sample_id: str, number: int, completion: str, error: str | None = None) -> Attempt:
    return Attempt(sample_id=sample_id, attempt=number, backend="replay", model_id="m", prompt_hash="h",
                   completion=completion, completion_tokens=len(completion.split()), error=error)


GOLD = Gold(("AU1", "AU4", "AU15"), ("sadness",), None)


# ---------------------------------------------------------------- partitions
def test_partitions_are_stable_and_duplicates_quarantined():
    records = [sample(i) for i in range(5)] + [sample(2)] + [QuarantineRecord("in.jsonl", 9, None, "bad_json")]
    parts = list(cut_partitions(records, 3))
    assert [len(p.records) for p in parts] == [3, 3, 1]
    assert [p.index for p in parts] == [0, 1, 2]
    again = list(cut_partitions(records, 3))
    assert [p.fingerprint() for p in parts] == [p.fingerprint() for p in again]
    dup = parts[1].records[2]
    assert isinstance(dup, QuarantineRecord) and dup.reason.startswith("duplicate_id") and dup.sample_id == "s2"
    assert [s.id for s in parts[1].samples] == ["s3", "s4"]
    changed = list(cut_partitions([sample(i) for i in (0, 1, 7)], 3))
    assert changed[0].fingerprint() != parts[0].fingerprint()


# ---------------------------------------------------------------- judging and outcomes
def test_judge_turns_generation_errors_into_rejections():
    batch = [[attempt("s0", 0, GOOD)], [attempt("s1", 0, "", error="replay_missing: none")]]
    judged = judge(batch, [GOLD, GOLD], VerifierConfig())
    assert judged[0][0].verdict.accepted
    failed = judged[1][0].verdict
    assert not failed.accepted and failed.reasons == ("generation_error: replay_missing: none",)
    with pytest.raises(ValueError):
        judge(batch, [GOLD], VerifierConfig())


def test_outcome_keeps_first_accepted_and_best_history():
    cfg = VerifierConfig()
    outcome = Outcome(sample(0))
    worse, better = "no tags at all", "<think>Brows lowered (AU4).</think><answer>sadness</answer>"
    outcome.record(judge([[attempt("s0", 0, worse), attempt("s0", 0, better)]], [GOLD], cfg)[0])
    assert outcome.accepted is None
    (completion, reasons), = outcome.history()
    assert completion == better and reasons  # the retry quotes the best-scoring of the n completions
    outcome.record(judge([[attempt("s0", 1, BAD), attempt("s0", 1, GOOD)]], [GOLD], cfg)[0])
    assert outcome.accepted is not None and outcome.accepted.attempt.completion == GOOD
    assert outcome.generated_tokens == sum(len(c.split()) for c in (worse, better, BAD, GOOD))


# ---------------------------------------------------------------- writing
def finished(partition, accept: set[str]) -> PartitionResult:
    outcomes = []
    for s in partition.samples:
        o = Outcome(s)
        o.record(judge([[attempt(s.id, 0, GOOD if s.id in accept else BAD)]], [GOLD], VerifierConfig())[0])
        outcomes.append(o)
    return PartitionResult("job-1", partition, outcomes)


def test_write_partition_commits_last_and_never_rewrites(tmp_path):
    out = str(tmp_path / "out")
    records = [sample(0), sample(1), QuarantineRecord("in.jsonl", 3, "s9", "image_missing: x.png"), sample(2)]
    partition = next(cut_partitions(records, 4))
    commit = write_partition(out, finished(partition, accept={"s0", "s2"}))
    assert (commit.inputs, commit.accepted, commit.rejected, commit.quarantined) == (4, 2, 1, 1)
    assert commit.attempts_histogram == {"1": 3}
    assert sorted(s.uri for s in commit.shards) == ["accepted/part-00000.parquet", "accepted/part-00000.tar",
                                                    "quarantine/part-00000.parquet", "rejected/part-00000.parquet"]
    for ref in commit.shards:
        data = (tmp_path / "out" / ref.uri).read_bytes()
        assert sha256_hex(data) == ref.sha256
    rejected = list(shards.iter_parquet_rows(str(tmp_path / "out/rejected/part-00000.parquet")))
    assert rejected[0]["id"] == "s1" and rejected[0]["attempts"][0]["reasons"]

    commit_file = tmp_path / "out/commits/part-00000.json"
    stamp = commit_file.stat().st_mtime_ns, (tmp_path / "out/accepted/part-00000.tar").stat().st_mtime_ns
    again = write_partition(out, finished(partition, accept=set()))  # a redo never replaces a commit
    assert again == commit
    assert stamp == (commit_file.stat().st_mtime_ns, (tmp_path / "out/accepted/part-00000.tar").stat().st_mtime_ns)
    other = next(cut_partitions([sample(5)], 4))
    with pytest.raises(InputChangedError):
        write_partition(out, finished(other, accept=set()))
    assert totals(read_commits(out))["accepted"] == 2


def test_write_partition_removes_stale_uncommitted_shards(tmp_path):
    out = tmp_path / "out"
    stale = out / "accepted" / "part-00000.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an interrupted run")
    commit = write_partition(str(out), finished(next(cut_partitions([sample(0)], 4)), accept=set()))
    assert not stale.exists() and commit.accepted == 0


def test_accounting_is_checked_before_commit(tmp_path):
    partition = next(cut_partitions([sample(0), sample(1)], 4))
    result = finished(partition, accept={"s0"})
    result.outcomes.pop()
    with pytest.raises(AssertionError):
        write_partition(str(tmp_path), result)
    assert not (tmp_path / "commits").exists()


# ---------------------------------------------------------------- replay
def request(sample_id: str, number: int) -> GenerationRequest:
    return GenerationRequest(key=f"{sample_id}#{number}", sample_id=sample_id, attempt=number, messages=(),
                             image=b"")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_replay_serves_stored_completions(tmp_path, fmt):
    rows = [{"sample_id": "a", "attempt": 0, "completion": "x", "completion_tokens": 3},
            {"sample_id": "a", "attempt": 1, "completion": "y", "completion_tokens": 4},
            {"sample_id": "a", "attempt": 1, "completion": "z", "completion_tokens": 5}]
    path = tmp_path / f"store.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    backend = ReplayBackend()
    backend.load(None, None, GenerationConfig(backend="replay", replay_path=str(path)))
    out = backend.generate([request("a", 1), request("a", 0), request("b", 0)], SamplingParams(n=2))
    assert [a.completion for a in out[0]] == ["y", "z"] and out[0][1].completion_tokens == 5
    assert [a.completion for a in out[1]] == ["x", "x"]
    assert all(a.error and "replay_missing" in a.error for a in out[2])


def test_replay_store_errors_are_clear(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"sample_id": "a", "completion": "x"}) + "\n")
    with pytest.raises(ValueError, match="row 1: missing attempt"):
        load_store(str(path))
    path.write_text("{oops\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        load_store(str(path))


# ---------------------------------------------------------------- job identity and config checks
def test_job_identity_allows_operational_changes_only(tmp_path):
    base = {"input": str(tmp_path / "in.jsonl"), "out": str(tmp_path / "out"), "model": {"path": "m"}}
    cfg = resolve_config(SynthConfig.model_validate(base))
    job_id = default_job_id(cfg.out)
    assert job_id == default_job_id(cfg.out + "/")
    open_job(cfg, job_id)
    open_job(resolve_config(SynthConfig.model_validate({**base, "generators": 4, "progress": "off",
                                                          "generation": {"batch_size": 3}})), job_id)
    with pytest.raises(JobMismatchError, match="model.path"):
        open_job(resolve_config(SynthConfig.model_validate({**base, "model": {"path": "other"}})), job_id)
    with pytest.raises(JobMismatchError, match="max_new_tokens"):
        open_job(resolve_config(SynthConfig.model_validate({**base, "generation": {"max_new_tokens": 7}})), job_id)
    stored = json.loads((tmp_path / "out" / "job.json").read_text())
    assert stored["config"]["generation"]["max_new_tokens"] == 256


@pytest.mark.parametrize("fields, message", [
    ({"generation": {"n": 2}}, "temperature"),
    ({"generation": {"backend": "replay"}}, "replay_path"),
    ({"model": {"path": ""}}, "model.path"),
    ({"out": ""}, "out"),
])
def test_inconsistent_settings_are_refused(tmp_path, fields, message):
    base = {"input": "in.jsonl", "out": str(tmp_path), "model": {"path": "m"}}
    with pytest.raises(ConfigError, match=message):
        resolve_config(SynthConfig.model_validate({**base, **fields}))


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(SynthConfig.model_validate({"input": "in.jsonl", "out": "s3://b/x/", "model": {"path": "m"}}))
    assert cfg.input == os.path.join(str(tmp_path), "in.jsonl") and cfg.model.path == str(tmp_path / "m")
    assert cfg.out == "s3://b/x"


# ---------------------------------------------------------------- progress
def test_progress_log_line_has_counts_rate_and_eta(caplog):
    progress = Progress("log", already_done=10, log_every_s=0.0)
    progress.started -= 10.0  # as if 10 s had passed
    counts = Counts(accepted=25, rejected=5, quarantined=0, in_flight=8, total=50)
    line = progress.line(counts)
    assert "30/50 done" in line and "accepted 25" in line and "8 in flight" in line
    assert "2.00 samples/s" in line and "ETA 10s" in line
    with caplog.at_level("INFO", logger="engine.synth.job"):
        progress.update(counts)
    assert "30/50 done" in caplog.text


def test_progress_bar_shows_counts_and_auto_picks_log_off_terminal(capsys):
    progress = Progress("bar", already_done=2)
    counts = Counts(accepted=3, rejected=1, quarantined=1, in_flight=4, total=10)
    progress.update(counts)
    assert progress.bar.n == 5 and progress.bar.total == 10
    progress.close(counts)
    err = capsys.readouterr().err
    assert "accepted=3" in err and "in_flight=4" in err and "5/10" in err
    assert Progress("auto").mode == "log"  # pytest's stderr is not a terminal
    assert Progress("off").bar is None


def test_lost_work_is_told_apart_from_bugs():
    """Work lost with a dead process is redone; an exception raised by our code fails the job."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    from engine.synth.pool import is_lost_work

    via_filter = RayTaskError("FilterActor.verify", "traceback", ActorUnavailableError("restarting", b"\0" * 16))
    assert is_lost_work(via_filter) and is_lost_work(via_filter.as_instanceof_cause())
    assert is_lost_work(ActorDiedError())
    assert not is_lost_work(RayTaskError("GeneratorActor.generate", "traceback", ValueError("bug")))
    assert not is_lost_work(ValueError("bug"))


def test_known_leftovers_limit_deletes_to_files_that_exist(tmp_path, monkeypatch):
    """With the writer's listing of existing shards, an empty shard kind costs a delete only when a
    file of an earlier try is there; the listing follows what each write adds and removes."""
    from engine.data import storage

    out = tmp_path / "out"
    stale = out / "rejected" / "part-00001.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an interrupted run")
    leftovers = existing_shards(str(out))
    assert leftovers == {"rejected/part-00001.parquet"}

    removed = []
    real_remove = storage.remove
    monkeypatch.setattr(storage, "remove", lambda uri: (removed.append(os.path.relpath(uri, out)), real_remove(uri)))
    first = next(cut_partitions([sample(0)], 4))  # partition 0: accepted only, nothing stale
    write_partition(str(out), finished(first, accept={"s0"}), leftovers)
    assert removed == []
    assert leftovers == {"rejected/part-00001.parquet", "accepted/part-00000.tar", "accepted/part-00000.parquet"}

    second = list(cut_partitions([sample(i) for i in range(8)], 4))[1]  # partition 1: s4..s7, all accepted
    commit = write_partition(str(out), finished(second, accept={"s4", "s5", "s6", "s7"}), leftovers)
    assert removed == ["rejected/part-00001.parquet"] and not stale.exists()
    assert commit.rejected == 0 and "rejected/part-00001.parquet" not in leftovers
    assert leftovers == existing_shards(str(out))  # the listing stayed true


def test_a_failed_shard_write_leaves_the_partition_uncommitted(tmp_path, monkeypatch):
    """Shards are written side by side in threads; a failure in any of them must still stop the commit."""
    def broken(uri, rows, schema, row_group_size=256):
        raise OSError("disk full")

    monkeypatch.setattr(shards, "write_parquet", broken)
    partition = next(cut_partitions([sample(0), sample(1)], 4))
    with pytest.raises(OSError, match="disk full"):
        write_partition(str(tmp_path / "out"), finished(partition, accept={"s0"}))
    assert not (tmp_path / "out" / "commits").exists()
    assert read_commits(str(tmp_path / "out")) == []


def _request(key: str) -> GenerationRequest:
    return GenerationRequest(key=key, sample_id=key.split("#")[0], attempt=int(key.split("#")[1]), messages=(),
                             image=b"")


def test_a_retry_waits_for_the_generator_that_holds_its_previous_attempt():
    queue = RequestQueue(generators=2)
    for key in ("a#0", "b#0", "c#0"):
        queue.add(_request(key))
    queue.add_retry(_request("x#1"), generator=1)
    queue.add_retry(_request("y#1"), generator=0)
    assert queue.ready_for(0) == queue.ready_for(1) == 4 and len(queue) == 5
    # its own retries first, then new samples; never the other generator's retries while there is work
    assert [r.key for r in queue.take(0, 2)] == ["y#1", "a#0"]
    assert [r.key for r in queue.take(1, 3)] == ["x#1", "b#0", "c#0"]
    assert len(queue) == 0


def test_an_idle_generator_takes_other_retries_rather_than_wait_and_lost_work_goes_first():
    queue = RequestQueue(generators=3)
    queue.add_retry(_request("x#1"), generator=1)
    for key in ("p#2", "q#2", "r#2"):
        queue.add_retry(_request(key), generator=2)
    assert [r.key for r in queue.take(0, 2)] == ["p#2", "q#2"]  # the longest queue
    queue.add(_request("new#0"))
    queue.put_back(_request("lost#3"))
    assert [r.key for r in queue.take(1, 4)] == ["x#1", "lost#3", "new#0"]
    assert [r.key for r in queue.take(0, 4)] == ["r#2"]
