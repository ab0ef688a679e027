"""`fea synth`: grow FEA-20K-style data from labelled images with Ray generator and filter actors.

Flow: input records -> stable partitions -> GenerationRequests (driver queue) -> generator actors
-> filter actors (the generator's result ObjectRef goes straight to the filter) -> driver: accept,
or put a retry carrying the history at the FRONT of the queue -> a partition whose samples are all
final goes to the writer actor -> shards, then the commit record (last, write-once).

Exactly once: committed partitions are skipped on a rerun, so a crash at any point is recovered by
running the same command again; a generator actor that dies has its in-flight requests re-queued
(same attempt numbers) while Ray restarts it.
"""
from __future__ import annotations

import itertools
import logging
import sys
import time
from typing import Any

from engine.core.config import SynthConfig
from engine.core.types import PartitionCommit
from engine.data import storage
from engine.data.lease import OutputLease
from engine.synth.input import (PREFETCH_PARTITIONS, InputPlan, JobMismatchError, Prefetcher, default_job_id,
                                 open_job, resolve_config)
from engine.synth.partition import totals
from engine.synth.pool import ActorPool, GeneratorFleet
from engine.synth.progress import Counts, Progress
from engine.synth.scheduler import RunStats, Scheduler

log = logging.getLogger("engine.synth.job")


def run_synth(cfg: SynthConfig, fleet: GeneratorFleet | None = None, wait_for_lease: bool = False) -> dict[str, Any]:
    """Run (or resume) a synthesis job; returns the summary also written to OUT/summary.json.

    The job holds OUT's lease throughout (one writer per output): another driver's lease makes it
    refuse (LeaseHeldError), or wait with `wait_for_lease`. With a `fleet`, the job uses (and leaves
    running) its generator actors; the caller releases them."""
    started = time.monotonic()
    cfg = resolve_config(cfg)
    with OutputLease(cfg.out).acquire(wait=wait_for_lease) as lease:
        return _run_leased(cfg, fleet, lease, started)


def _run_leased(cfg: SynthConfig, fleet: GeneratorFleet | None, lease: OutputLease, started: float) -> dict[str, Any]:
    job_id = cfg.job_id or default_job_id(cfg.out)
    open_job(cfg, job_id)
    committed = {c.partition: c for c in _read_commits(cfg.out, job_id)}
    log.info("synth job %s: %s -> %s (%d partitions already committed)", job_id, storage.redact(cfg.input),
             storage.redact(cfg.out), len(committed))
    plan = InputPlan(cfg, committed)
    partitions = iter(plan)
    first = next(partitions, None)  # the input is read (and committed partitions checked) up to here
    if first is None:
        print(f"nothing to do: {len(committed)} partitions already committed", file=sys.stderr)
        return _existing_summary(cfg, job_id)
    before = totals(committed.values())
    counts = Counts(accepted=before["accepted"], rejected=before["rejected"], quarantined=before["quarantined"])
    progress = Progress(cfg.progress, already_done=counts.done)
    # Reads on while the actors start (seconds in which the driver is otherwise idle); a deep queue lets
    # that time absorb more of the input parsing, which later competes with the scheduler for the GIL.
    source = Prefetcher(itertools.chain([first], partitions), depth=PREFETCH_PARTITIONS)
    try:
        pool = ActorPool.start(cfg, job_id, fleet, lease_token=lease.token)
        try:
            scheduler = Scheduler(cfg, job_id, pool, progress, counts)
            scheduler.lease = lease
            stats = scheduler.run(source, plan)
        finally:
            progress.close(counts)
            pool.stop()
    finally:
        source.stop()
    summary = _summary(cfg, job_id, stats, wall=time.monotonic() - started, startup=pool.startup_seconds,
                       model_ids=sorted(set(pool.model_ids)))
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    return summary


def _read_commits(out: str, job_id: str) -> list[PartitionCommit]:
    from engine.data.commits import read_commits

    commits = read_commits(out)
    foreign = [c.partition for c in commits if c.job_id != job_id]
    if foreign:
        raise JobMismatchError(f"{storage.redact(out)} holds commits of another job (partition {foreign[0]})")
    return commits


def _summary(cfg: SynthConfig, job_id: str, stats: RunStats, *, wall: float, startup: float,
             model_ids: list[str]) -> dict[str, Any]:
    """Totals over every commit of the job (earlier runs included) + this run's speed."""
    summary: dict[str, Any] = {"job_id": job_id, "out": storage.redact(cfg.out), "backend": cfg.generation.backend,
                               "model_ids": model_ids, "policy": cfg.verifier.policy}
    summary.update(totals(_read_commits(cfg.out, job_id)))
    def rate(amount: float, seconds: float) -> float:
        return round(amount / seconds, 3) if seconds > 0 else 0.0

    # wall: the whole command (Ray start, model load, shutdown); steady: generating and committing only
    steady = stats.processing_seconds
    summary.update({
        "wall_seconds": round(wall, 3),
        "samples_per_second": rate(stats.samples, wall),
        "generated_tokens_per_second": rate(stats.generated_tokens, wall),
        "run": {"samples": stats.samples, "partitions": stats.partitions, "generated_tokens": stats.generated_tokens,
                "startup_seconds": round(startup, 3), "steady_seconds": round(steady, 3),
                "steady_samples_per_second": rate(stats.samples, steady),
                "steady_generated_tokens_per_second": rate(stats.generated_tokens, steady),
                "generator_requests": stats.generator_requests},
    })
    return summary


def _existing_summary(cfg: SynthConfig, job_id: str) -> dict[str, Any]:
    """The stored summary of a finished job, rebuilt from the commits when it is missing."""
    import json

    uri = storage.join(cfg.out, "summary.json")
    if storage.exists(uri):
        return json.loads(storage.read_text(uri))
    summary = _summary(cfg, job_id, RunStats(), wall=0.0, startup=0.0, model_ids=[])
    storage.write_json(uri, summary)
    return summary
