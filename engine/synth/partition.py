"""Partitions of a synthesis job: how the input is cut, what each sample ended as, and what its commit
says (engine/data/commits.py writes and reads it).

The input, numbered in order, is cut into partitions of `partition_size` records (partition =
position // size), so a rerun over the same input sees the same partitions. A partition becomes
visible only through its commit record, written last and write-once; its shard names are fixed by
its number, so redoing an uncommitted partition replaces only its own uncommitted files.
"""
from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from engine.data import commits, shards
from engine.synth.judge import Judged
from engine.core.types import PartitionCommit, QuarantineRecord, Sample, ShardRef, sha256_hex

Record = Sample | QuarantineRecord


# ---------------------------------------------------------------- cutting the input
def record_key(record: Record) -> str:
    """The id a record contributes to its partition's fingerprint (quarantined lines may have none)."""
    if isinstance(record, Sample):
        return record.id
    return record.sample_id if record.sample_id is not None else f"#line:{record.line}"


@dataclass
class Partition:
    index: int
    records: list[Record]

    @property
    def samples(self) -> list[Sample]:
        return [r for r in self.records if isinstance(r, Sample)]

    @property
    def quarantined(self) -> list[QuarantineRecord]:
        return [r for r in self.records if isinstance(r, QuarantineRecord)]

    def fingerprint(self) -> str:
        return sha256_hex("\n".join(record_key(r) for r in self.records).encode("utf-8"))


def cut_partitions(records: Iterable[Record], size: int, source: str = "input") -> Iterator[Partition]:
    """Stable partitions of `size` records in input order.

    A sample id seen earlier in the input becomes a quarantine record here: request keys and output
    rows are keyed by id, so a second copy could never be accounted for on its own.
    """
    seen: set[str] = set()
    batch: list[Record] = []
    index = 0
    for position, record in enumerate(records):
        if isinstance(record, Sample):
            if record.id in seen:
                record = QuarantineRecord(source=source, line=-1, sample_id=record.id,
                                          reason=f"duplicate_id: input record {position} repeats an earlier id")
            else:
                seen.add(record.id)
        batch.append(record)
        if len(batch) == size:
            yield Partition(index, batch)
            index, batch = index + 1, []
    if batch:
        yield Partition(index, batch)


# ---------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    """Every attempt of one sample; final once accepted or out of attempts."""

    sample: Sample
    attempts: list[list[Judged]] = field(default_factory=list)  # per attempt number: its n completions
    accepted: Judged | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(j.attempt.completion_tokens for row in self.attempts for j in row)

    def history(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(completion, reasons) per failed attempt, for the retry prompt: the best-scoring of its n."""
        best = [max(row, key=lambda j: j.verdict.scores.total) for row in self.attempts]
        return tuple((j.attempt.completion, j.verdict.reasons) for j in best)

    def record(self, judged: list[Judged]) -> None:
        self.attempts.append(judged)
        self.accepted = next((j for j in judged if j.verdict.accepted), None)


@dataclass
class PartitionResult:
    """A finished partition on its way to the writer."""

    job_id: str
    partition: Partition
    outcomes: list[Outcome]  # one per sample, input order

    def check_accounting(self) -> None:
        """Every record of the partition ends in exactly one of accepted / rejected / quarantined."""
        sample_ids = [s.id for s in self.partition.samples]
        outcome_ids = [o.sample.id for o in self.outcomes]
        if sorted(sample_ids) != sorted(outcome_ids) or len(set(outcome_ids)) != len(outcome_ids):
            raise AssertionError(f"partition {self.partition.index}: outcomes do not match its samples "
                                 f"({len(outcome_ids)} outcomes for {len(sample_ids)} samples)")
        unfinished = [o.sample.id for o in self.outcomes if not o.attempts]
        if unfinished:
            raise AssertionError(f"partition {self.partition.index}: never generated for {unfinished[:5]}")


# ---------------------------------------------------------------- writing
def accepted_rows(result: PartitionResult) -> list[dict]:
    rows = []
    for outcome in result.outcomes:
        chosen = outcome.accepted
        if chosen is None:
            continue
        provenance = {"job_id": result.job_id, "model_id": chosen.attempt.model_id,
                      "backend": chosen.attempt.backend, "attempts": len(outcome.attempts),
                      "policy": chosen.verdict.policy, "verifier_version": chosen.verdict.verifier_version,
                      "prompt_hash": chosen.attempt.prompt_hash}
        rows.append(shards.accepted_row(outcome.sample, chosen.attempt.completion, provenance,
                                        _rewards(chosen.verdict.scores)))
    return rows


def rejected_rows(result: PartitionResult) -> list[dict]:
    return [shards.rejected_row(outcome.sample, [
        {"attempt": j.attempt.attempt, "completion": j.attempt.completion, "reasons": j.verdict.reasons,
         "rewards": _rewards(j.verdict.scores)} for row in outcome.attempts for j in row])
        for outcome in result.outcomes if outcome.accepted is None]


def _rewards(scores) -> dict[str, float]:
    # field by field: dataclasses.asdict deep-copies, a cost paid for every stored attempt
    return {name: getattr(scores, name) for name in shards.REWARDS_TYPE.names}


def write_partition(out: str, result: PartitionResult, leftovers: set[str] | None = None) -> PartitionCommit:
    """Write a finished partition's shards, then its commit record, last and write-once.

    An already committed partition is never rewritten: its existing commit is returned (after checking
    it covers the same input ids). `leftovers`: see `commits.write_shards`.
    """
    result.check_accounting()
    index = result.partition.index
    existing = commits.read_commit(out, index)
    if existing is not None:
        return _same_input_or_fail(existing, result)
    rows = {"accepted": accepted_rows(result), "rejected": rejected_rows(result),
            "quarantine": [shards.quarantine_to_row(q) for q in result.partition.quarantined]}
    written = commits.write_shards(out, index, rows, leftovers)
    commit = make_commit(result, accepted=len(rows["accepted"]), rejected=len(rows["rejected"]),
                         quarantined=len(rows["quarantine"]), shards_written=written)
    failpoint("before-commit")
    if not commits.write_commit(out, commit):
        # another writer committed this partition between our check and now: theirs stands
        return _same_input_or_fail(commits.read_commit(out, index), result)
    return commit


FAILPOINT_ENV = "FEA_FAILPOINT"


def failpoint(name: str) -> None:
    """For fault tests: with FEA_FAILPOINT=<name>:<marker file>, the process SIGKILLs itself here, once
    (the marker file, created first, keeps its restarted successor alive)."""
    point, _, marker = os.environ.get(FAILPOINT_ENV, "").partition(":")
    if point != name or not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def make_commit(result: PartitionResult, *, accepted: int, rejected: int, quarantined: int,
                shards_written: tuple[ShardRef, ...]) -> PartitionCommit:
    partition = result.partition
    if accepted + rejected + quarantined != len(partition.records):
        raise AssertionError(f"partition {partition.index}: {accepted} accepted + {rejected} rejected + "
                             f"{quarantined} quarantined != {len(partition.records)} inputs")
    histogram = Counter(str(len(o.attempts)) for o in result.outcomes)
    return PartitionCommit(job_id=result.job_id, partition=partition.index,
                           sample_ids_sha256=partition.fingerprint(), inputs=len(partition.records),
                           accepted=accepted, rejected=rejected, quarantined=quarantined,
                           attempts_histogram=dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
                           generated_tokens=sum(o.generated_tokens for o in result.outcomes),
                           shards=shards_written)


def _same_input_or_fail(commit: PartitionCommit, result: PartitionResult) -> PartitionCommit:
    if commit.sample_ids_sha256 != result.partition.fingerprint():
        raise InputChangedError(f"partition {commit.partition} was committed from different input records")
    return commit


class InputChangedError(RuntimeError):
    """The input no longer matches what earlier runs committed under the same output."""


# ---------------------------------------------------------------- totals
def totals(commits: Iterable[PartitionCommit]) -> dict:
    """Counts over committed partitions (the authoritative record of what the job produced)."""
    commits = list(commits)
    histogram: Counter[str] = Counter()
    for c in commits:
        histogram.update(c.attempts_histogram)
    return {"partitions": len(commits), "inputs": sum(c.inputs for c in commits),
            "accepted": sum(c.accepted for c in commits), "rejected": sum(c.rejected for c in commits),
            "quarantined": sum(c.quarantined for c in commits),
            "attempts_histogram": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
            "generated_tokens": sum(c.generated_tokens for c in commits)}
