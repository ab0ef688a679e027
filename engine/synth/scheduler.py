"""The scheduler of a synthesis job: keeps every generator busy, routes each generated batch to a
filter, queues retries ahead of new samples, recovers from actors that die, and hands finished
partitions to the writer."""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.core.config import SynthConfig
from engine.core.types import GenerationRequest, PartitionCommit, SamplingParams
from engine.data.lease import OutputLease
from engine.synth.input import InputPlan, Prefetcher
from engine.synth.judge import Gold
from engine.synth.partition import Outcome, Partition, PartitionResult
from engine.synth.pool import ActorPool, is_lost_work
from engine.synth.progress import Counts, Progress

# One logger for every part of a synthesis run (scheduler, pool, progress): `engine.synth.job`.
log = logging.getLogger("engine.synth.job")

MAX_REQUEUES = 3  # a request whose generator died this many times fails the job instead of looping


@dataclass
class OpenPartition:
    partition: Partition
    outcomes: dict[str, Outcome]
    remaining: int  # samples not final yet


@dataclass
class Batch:
    generator: int
    filter: int
    requests: list[GenerationRequest]


class RequestQueue:
    """Requests waiting for a generator. A retry waits for the generator that ran its sample's previous
    attempt, which still holds that attempt's KV (the hf backend's prefix cache, vLLM's prefix
    caching), so the retry prefills only its new turn there. Retries go before new samples so samples
    finish and partitions commit early. An idle generator with nothing of its own takes another
    generator's retries rather than wait."""

    def __init__(self, generators: int) -> None:
        self.shared: deque[GenerationRequest] = deque()
        self.retries: list[deque[GenerationRequest]] = [deque() for _ in range(generators)]

    def __len__(self) -> int:
        return len(self.shared) + sum(map(len, self.retries))

    def add(self, request: GenerationRequest) -> None:
        self.shared.append(request)

    def add_retry(self, request: GenerationRequest, generator: int) -> None:
        self.retries[generator].append(request)

    def put_back(self, request: GenerationRequest) -> None:
        """At the front, for any generator: a request whose generator was lost."""
        self.shared.appendleft(request)

    def ready_for(self, generator: int) -> int:
        return len(self.retries[generator]) + len(self.shared)

    def take(self, generator: int, count: int) -> list[GenerationRequest]:
        """Up to `count` requests for `generator`: its retries, then shared ones, then, if it got
        none of its own, another generator's retries (the longest queue first)."""
        own = self.retries[generator]
        taken = [own.popleft() for _ in range(min(count, len(own)))]
        taken += [self.shared.popleft() for _ in range(min(count - len(taken), len(self.shared)))]
        if not taken:
            other = max(self.retries, key=len)
            taken = [other.popleft() for _ in range(min(count, len(other)))]
        return taken


@dataclass
class Recovery:
    """An actor that failed a call: it gets no work until a readiness probe answers."""

    probe: Any = None  # ObjectRef of the probe in flight
    retry_at: float = 0.0


@dataclass
class RunStats:
    samples: int = 0  # inputs finished (accepted, rejected, quarantined) in committed partitions of this run
    partitions: int = 0
    generated_tokens: int = 0
    processing_seconds: float = 0.0  # first request handed out .. last commit written
    commits: list[PartitionCommit] = field(default_factory=list)
    generator_requests: list[int] = field(default_factory=list)  # requests handed to each generator actor


def inflight_batches(cfg: SynthConfig) -> int:
    """Batches handed to one generator at a time. vLLM runs the batches it holds as one continuous
    batch of up to max_num_seqs sequences, so it gets enough of them to fill that; the other
    backends run one batch at a time and only need the next one queued."""
    gen = cfg.generation
    if gen.backend == "vllm":
        return max(cfg.inflight_batches_per_generator, -(-gen.max_num_seqs // gen.batch_size))
    return cfg.inflight_batches_per_generator


class Scheduler:
    """Keeps every generator busy; retries jump the queue so samples finish and partitions commit early."""

    def __init__(self, cfg: SynthConfig, job_id: str, pool: ActorPool, progress: Progress, counts: Counts) -> None:
        self.cfg = cfg
        self.job_id = job_id
        self.pool = pool
        self.progress = progress
        self.counts = counts
        gen = cfg.generation
        self.params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                     top_p=gen.top_p, n=gen.n, seed=gen.seed)
        self.batch_size = gen.batch_size
        self.inflight_per_generator = inflight_batches(cfg)
        capacity = cfg.generators * self.inflight_per_generator * gen.batch_size
        self.low_water = 2 * capacity  # admit more input while fewer requests than this wait
        self.max_open = max(4, 2 * -(-capacity // cfg.partition_size) + 2)
        self.pending = RequestQueue(cfg.generators)
        self.open: dict[int, OpenPartition] = {}
        self.sample_partition: dict[str, int] = {}
        self.inflight: dict[Any, Batch] = {}  # filter result ref -> batch
        self.per_generator = [0] * cfg.generators
        self.writes: dict[Any, PartitionResult] = {}
        self.requeues: dict[str, int] = {}
        self.filter_turn = 0
        self.recovering: dict[tuple[str, int], Recovery] = {}
        self.probes: dict[Any, tuple[str, int]] = {}
        self.stats = RunStats(generator_requests=[0] * cfg.generators)
        self.lease: OutputLease | None = None  # checked every turn: a lost lease stops the job

    # -- input
    def _admit(self, source: Prefetcher, block: bool) -> bool:
        """Open partitions while the queue runs low; False once the input is exhausted.

        Waits for the input only when `block` (nothing else to do); otherwise takes what is ready."""
        from engine.core.prompts import make_request

        while len(self.pending) < self.low_water and len(self.open) < self.max_open:
            partition = source.next(block=block)
            if partition is Prefetcher.NOT_READY:
                return True
            if partition is None:
                return False
            block = False
            samples = partition.samples
            self.open[partition.index] = OpenPartition(partition, {s.id: Outcome(s) for s in samples}, len(samples))
            self.counts.quarantined += len(partition.quarantined)
            for sample in samples:
                self.sample_partition[sample.id] = partition.index
                self.pending.add(make_request(sample, 0, hint=self.cfg.hint, style=self.cfg.prompt_style))
            if not samples:
                self._finish_partition(partition.index)
        return True

    # -- generation
    def _dispatch(self) -> None:
        filters = [f for f in range(len(self.pool.filters)) if ("filter", f) not in self.recovering]
        generators = [g for g in range(len(self.pool.generators)) if ("generator", g) not in self.recovering]
        while self.pending and filters and generators:
            # the least loaded generator first, so a short queue is spread over all of them
            g = next((g for g in sorted(generators, key=self.per_generator.__getitem__) if self._can_take(g)), None)
            if g is None:
                break
            self._send_batch(g, filters)

    def _can_take(self, g: int) -> bool:
        """A busy generator is topped up with full batches only; an idle one takes what there is."""
        if self.per_generator[g] >= self.inflight_per_generator:
            return False
        return self.per_generator[g] == 0 or self.pending.ready_for(g) >= self.batch_size

    def _send_batch(self, g: int, filters: list[int]) -> None:
        requests = self.pending.take(g, self.batch_size)
        golds = [self._gold(r.sample_id) for r in requests]
        generated = self.pool.generators[g].generate.remote(requests, self.params)
        self.filter_turn += 1
        f = filters[self.filter_turn % len(filters)]
        judged = self.pool.filters[f].verify.remote(generated, golds)  # no driver round trip
        self.inflight[judged] = Batch(g, f, requests)
        self.per_generator[g] += 1
        self.stats.generator_requests[g] += len(requests)
        self.counts.in_flight += len(requests)

    def _gold(self, sample_id: str) -> Gold:
        from engine.core.facs import label_set_for

        sample = self.open[self.sample_partition[sample_id]].outcomes[sample_id].sample
        return Gold(sample.aus, sample.labels, label_set_for(sample.dataset))

    def _on_judged(self, ref) -> None:
        import ray

        batch = self.inflight.pop(ref)
        self.per_generator[batch.generator] -= 1
        self.counts.in_flight -= len(batch.requests)
        try:
            judged = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - actor deaths are recovered, anything else fails the job
            if not is_lost_work(err):
                raise
            self._requeue(batch, err)
            return
        from engine.core.prompts import make_request

        for request, completions in zip(batch.requests, judged):
            outcome = self.open[self.sample_partition[request.sample_id]].outcomes[request.sample_id]
            if request.attempt != len(outcome.attempts):
                raise AssertionError(f"{request.key}: result arrived after {len(outcome.attempts)} recorded attempts")
            outcome.record(completions)
            if outcome.accepted is not None or len(outcome.attempts) > self.cfg.max_retries:
                self._finish_sample(outcome)
            else:
                retry = make_request(outcome.sample, len(outcome.attempts), hint=self.cfg.hint,
                                     history=outcome.history(), style=self.cfg.prompt_style)
                self.pending.add_retry(retry, batch.generator)

    def _requeue(self, batch: Batch, err: BaseException) -> None:
        log.warning("%d in-flight requests of generator %d and filter %d lost (%s); re-queued while the "
                    "dead actor restarts", len(batch.requests), batch.generator, batch.filter, type(err).__name__)
        # Either actor of the pipeline may be the one that died: both wait for a probe (a live one
        # answers at once). Calls to a restarting actor fail at once, so nothing is sent meanwhile.
        for actor in (("generator", batch.generator), ("filter", batch.filter)):
            self.recovering.setdefault(actor, Recovery())
        for request in reversed(batch.requests):
            count = self.requeues.get(request.key, 0) + 1
            if count > MAX_REQUEUES:
                raise RuntimeError(f"request {request.key} lost {count} times to dying generators; giving up "
                                   f"(rerun the same command to resume from the last commit)") from err
            self.requeues[request.key] = count
            self.pending.put_back(request)

    def _finish_sample(self, outcome: Outcome) -> None:
        if outcome.accepted is not None:
            self.counts.accepted += 1
        else:
            self.counts.rejected += 1
        index = self.sample_partition.pop(outcome.sample.id)
        self.open[index].remaining -= 1
        if self.open[index].remaining == 0:
            self._finish_partition(index)

    # -- recovery
    def _probe_recovering(self) -> None:
        now = time.monotonic()
        for actor, state in self.recovering.items():
            if state.probe is None and now >= state.retry_at:
                kind, index = actor
                handle = self.pool.generators[index] if kind == "generator" else self.pool.filters[index]
                state.probe = handle.ready.remote()
                self.probes[state.probe] = actor

    def _on_probe(self, ref) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError

        actor = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ActorUnavailableError:  # still restarting (reloading its model): ask again shortly
            self.recovering[actor] = Recovery(retry_at=time.monotonic() + 0.5)
            return
        except Exception as err:  # noqa: BLE001 - a restart that failed for good ends the job
            raise RuntimeError(f"{actor[0]} actor {actor[1]} died and could not be restarted "
                               f"(rerun the same command to resume from the last commit)") from err
        del self.recovering[actor]
        log.info("%s actor %d is back", *actor)

    # -- writing
    def _finish_partition(self, index: int) -> None:
        done = self.open.pop(index)
        result = PartitionResult(self.job_id, done.partition,
                                 [done.outcomes[s.id] for s in done.partition.samples])
        result.check_accounting()
        self._submit_write(result)

    def _submit_write(self, result: PartitionResult) -> None:
        self.writes[self.pool.writer.write.remote(result)] = result

    def _on_written(self, ref) -> None:
        import ray

        result = self.writes.pop(ref)
        try:
            commit: PartitionCommit = ray.get(ref)
        except Exception as err:  # noqa: BLE001
            if not is_lost_work(err):
                raise
            log.warning("writer died on partition %d; writing it again", result.partition.index)
            self._submit_write(result)
            return
        self.stats.commits.append(commit)
        self.stats.partitions += 1
        self.stats.samples += commit.inputs
        self.stats.generated_tokens += commit.generated_tokens

    # -- main loop
    def run(self, source: Prefetcher, plan: InputPlan) -> RunStats:
        import ray

        started = time.monotonic()
        more_input = True
        while True:
            if self.lease is not None:
                self.lease.check()
            if more_input:
                idle = not (self.pending or self.inflight or self.writes or self.probes)
                more_input = self._admit(source, block=idle)
                if not more_input:
                    self.counts.total = plan.total_records
            self._probe_recovering()
            self._dispatch()
            waiting = list(self.inflight) + list(self.writes) + list(self.probes)
            if not waiting:
                if self.recovering:  # a probe waits for its retry time
                    time.sleep(0.1)
                    continue
                if more_input or self.pending:
                    continue
                break
            ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
            if ready:  # collect everything else that is already done in one go
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in ready:
                if ref in self.inflight:
                    self._on_judged(ref)
                elif ref in self.probes:
                    self._on_probe(ref)
                else:
                    self._on_written(ref)
            self.progress.update(self.counts)
        if self.open or self.pending:
            raise AssertionError(f"scheduler stopped with {len(self.open)} open partitions, "
                                 f"{len(self.pending)} queued requests")
        self.stats.processing_seconds = time.monotonic() - started
        return self.stats
