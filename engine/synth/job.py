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
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from engine.data import storage
from engine.data.lease import OutputLease
from engine.core.config import ConfigError, SynthConfig
from engine.synth.judge import Gold
from engine.synth.partition import InputChangedError, Outcome, Partition, PartitionResult, cut_partitions, totals
from engine.synth.progress import Counts, Progress
from engine.core.types import GenerationRequest, PartitionCommit, SamplingParams, sha256_hex

log = logging.getLogger("engine.synth.job")

# Settings that change how fast a job runs, not what it produces: free to differ between reruns.
OPERATIONAL_KEYS = frozenset({
    "generators", "filters", "progress", "inflight_batches_per_generator", "generator_num_cpus",
    "generator_num_gpus", "generation.batch_size", "generation.max_num_seqs", "generation.max_model_len",
    "generation.gpu_memory_utilization", "generation.enforce_eager",
})
PREFETCH_PARTITIONS = 16  # partitions read ahead of the scheduler (memory: their images)
MAX_REQUEUES = 3  # a request whose generator died this many times fails the job instead of looping


class JobMismatchError(RuntimeError):
    """OUT already belongs to a job with a different input, model or policy."""


# ---------------------------------------------------------------- job identity
def resolve_config(cfg: SynthConfig) -> SynthConfig:
    """Local paths made absolute (Ray workers may run elsewhere) and the settings checked together."""
    def absolute(uri: str | None) -> str | None:
        return uri if not uri or storage.is_s3(uri) else os.path.abspath(uri)

    if not cfg.input:
        raise ConfigError("synth: `input` is required")
    if not cfg.out:
        raise ConfigError("synth: `out` is required")
    gen = cfg.generation
    if gen.backend != "replay" and not cfg.model.path:
        raise ConfigError(f"synth: the {gen.backend} backend needs model.path (--model)")
    if gen.backend == "replay" and not gen.replay_path:
        raise ConfigError("synth: the replay backend needs generation.replay_path (--replay-path)")
    if gen.n > 1 and gen.temperature == 0:
        raise ConfigError("synth: generation.n > 1 needs temperature > 0 (greedy completions would be identical)")
    model = cfg.model.model_copy(update={"path": absolute(cfg.model.path) or "", "adapter": absolute(cfg.model.adapter)})
    generation = gen.model_copy(update={"replay_path": absolute(gen.replay_path)})
    return cfg.model_copy(update={"input": absolute(cfg.input), "image_root": absolute(cfg.image_root),
                                  "out": absolute(cfg.out).rstrip("/"), "model": model, "generation": generation})


def default_job_id(out: str) -> str:
    return "synth-" + sha256_hex(out.rstrip("/").encode("utf-8"))[:12]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def job_identity(cfg: SynthConfig, job_id: str) -> dict[str, Any]:
    """What decides a job's output: everything but the operational settings."""
    flat = _flatten(cfg.model_dump(mode="json"))
    flat["job_id"] = job_id
    return {k: v for k, v in sorted(flat.items()) if k not in OPERATIONAL_KEYS}


def open_job(cfg: SynthConfig, job_id: str) -> dict[str, Any]:
    """Write OUT/job.json once; on a rerun, refuse a job whose identity differs from the stored one."""
    import json

    identity = job_identity(cfg, job_id)
    record = {"job_id": job_id, "identity_sha256": sha256_hex(json.dumps(identity, sort_keys=True).encode()),
              "identity": storage.redact(identity), "config": storage.redact(cfg.model_dump(mode="json"))}
    uri = storage.join(cfg.out, "job.json")
    if storage.write_once(uri, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()):
        return record
    stored = json.loads(storage.read_text(uri))
    if stored.get("identity_sha256") != record["identity_sha256"]:
        before = _flatten(stored.get("identity", {}))
        now = _flatten(record["identity"])
        changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                   if before.get(k) != now.get(k)]
        raise JobMismatchError(f"{storage.redact(cfg.out)} already holds job {stored.get('job_id')} with other "
                               f"settings; use another --out or the original settings. Differences:\n  "
                               + "\n  ".join(changed))
    return stored


# ---------------------------------------------------------------- input
class InputPlan:
    """Partitions of the input that still need work; committed ones are checked and skipped."""

    def __init__(self, cfg: SynthConfig, committed: dict[int, PartitionCommit]) -> None:
        from engine.data.dataset import load_input

        self.committed = committed
        self.records = load_input(cfg.input, cfg.image_root)
        self.source = storage.redact(cfg.input)
        self.size = cfg.partition_size
        self.total_records: int | None = None  # known once the input is exhausted
        self.partitions = 0

    def __iter__(self) -> Iterator[Partition]:
        seen = 0
        for partition in cut_partitions(self.records, self.size, source=self.source):
            seen += len(partition.records)
            self.partitions = partition.index + 1
            commit = self.committed.get(partition.index)
            if commit is None:
                yield partition
            elif commit.sample_ids_sha256 != partition.fingerprint() or commit.inputs != len(partition.records):
                raise InputChangedError(
                    f"partition {partition.index} was committed from other input records than {self.source} "
                    f"holds now; the input changed since the earlier run (use a new --out)")
        beyond = sorted(p for p in self.committed if p >= self.partitions)
        if beyond:
            raise InputChangedError(f"{len(beyond)} committed partitions (from {beyond[0]}) lie beyond the end of "
                                    f"{self.source}; the input shrank since the earlier run (use a new --out)")
        self.total_records = seen


class Prefetcher:
    """Reads partitions ahead on a thread, so input parsing and image checks overlap generation
    (and Ray's startup) instead of stalling the scheduler."""

    _END = object()
    NOT_READY = object()

    def __init__(self, partitions: Iterator[Partition], depth: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(partitions,), name="fea-synth-input", daemon=True)
        self.thread.start()

    def _fill(self, partitions: Iterator[Partition]) -> None:
        try:
            for partition in partitions:
                if not self._put(partition):
                    return
            self._put(self._END)
        except BaseException as err:  # noqa: BLE001 - handed to the scheduler thread, raised there
            self._put(err)

    def _put(self, item: Any) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def next(self, block: bool) -> Any:
        """The next Partition, None at the end of the input, or NOT_READY (only when not blocking)."""
        try:
            item = self.queue.get(block=block)
        except queue.Empty:
            return self.NOT_READY
        if item is self._END:
            self.queue.put(item)  # stays at the end for later calls
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self.stopping.set()


# ---------------------------------------------------------------- actors
def _new_generators(cfg: SynthConfig, job_id: str) -> list:
    from actors.generator import GeneratorActor

    gen_cfg = cfg.generation.model_dump(mode="json")
    return [GeneratorActor.options(
        name=f"fea-{job_id}-generator-{i}", num_cpus=cfg.generator_num_cpus, num_gpus=cfg.generator_num_gpus,
        max_restarts=-1, max_task_retries=0).remote(
        cfg.generation.backend, cfg.model.path or None, cfg.model.adapter, gen_cfg, cfg.model.dtype)
        for i in range(cfg.generators)]


class GeneratorFleet:
    """Generator actors that outlive one job: the loop's next round reloads its model into them
    (`GeneratorActor.reload`) instead of starting new actors, as long as the backend settings match."""

    def __init__(self) -> None:
        self.actors: list = []
        self.settings: tuple | None = None

    def acquire(self, cfg: SynthConfig, job_id: str) -> list:
        import ray

        settings = (cfg.generation.model_dump_json(), cfg.model.dtype, cfg.generators, cfg.generator_num_cpus,
                    cfg.generator_num_gpus)
        if self.actors and settings == self.settings:
            ray.get([a.reload.remote(cfg.model.path or None, cfg.model.adapter) for a in self.actors])
            return self.actors
        self.release()
        self.actors, self.settings = _new_generators(cfg, job_id), settings
        return self.actors

    def release(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.settings = [], None


@dataclass
class ActorPool:
    generators: list
    filters: list
    writer: Any
    started_ray: bool
    model_ids: list[str]
    startup_seconds: float
    fleet: GeneratorFleet | None = None  # owns the generators when given

    @classmethod
    def start(cls, cfg: SynthConfig, job_id: str, fleet: GeneratorFleet | None = None,
              lease_token: str | None = None) -> "ActorPool":
        import ray

        from actors.filter import FilterActor
        from actors.writer import WriterActor
        from engine.raycluster import ensure_ray

        t0 = time.monotonic()
        started = ensure_ray()
        try:
            _check_capacity(ray, cfg, started)
        except Exception:
            if started:
                ray.shutdown()
            raise
        generators = fleet.acquire(cfg, job_id) if fleet else _new_generators(cfg, job_id)
        # Filters and the writer are light (text checks, file writes): reserving a CPU for each
        # would starve the generators on small machines.
        filters = [FilterActor.options(num_cpus=0, max_restarts=-1).remote(cfg.verifier.model_dump(mode="json"))
                   for _ in range(cfg.filters)]
        writer = WriterActor.options(num_cpus=0, max_restarts=-1).remote(cfg.out, lease_token)
        pool = cls(generators, filters, writer, started, [], 0.0, fleet)
        try:
            pool.model_ids = ray.get([g.model_id.remote() for g in generators])  # surfaces load errors now
        except Exception:
            pool.stop()
            raise
        pool.startup_seconds = time.monotonic() - t0
        log.info("%d generator(s) ready in %.1fs: %s", len(generators), pool.startup_seconds,
                 ", ".join(sorted(set(pool.model_ids))))
        return pool

    def stop(self) -> None:
        import ray

        if self.started_ray:
            ray.shutdown()
            return
        owned = self.filters + [self.writer] + ([] if self.fleet else self.generators)
        for actor in owned:
            ray.kill(actor, no_restart=True)


def _check_capacity(ray, cfg: SynthConfig, started_here: bool) -> None:
    """A generator that can never be placed would hang the job: on a local cluster, say so instead."""
    need_cpus = cfg.generators * cfg.generator_num_cpus
    need_gpus = cfg.generators * cfg.generator_num_gpus
    have = ray.cluster_resources()
    short = [f"{need:g} {name} needed, {have.get(key, 0):g} available" for key, name, need
             in (("CPU", "CPUs", need_cpus), ("GPU", "GPUs", need_gpus)) if need > have.get(key, 0)]
    if short:
        message = f"{cfg.generators} generator actor(s) do not fit this Ray cluster: " + "; ".join(short)
        if started_here:
            raise ConfigError(message)
        log.warning("%s (waiting for the cluster to grow)", message)


def _is_lost_work(err: BaseException) -> bool:
    """True when a call failed because a process or node went away (its work can simply be redone),
    possibly seen through the filter task that consumed the dead generator's result."""
    from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

    while isinstance(err, RayTaskError) and not isinstance(err, (RayActorError, ObjectLostError)):
        cause = getattr(err, "cause", None)
        if cause is None or cause is err:
            break
        err = cause
    return isinstance(err, (RayActorError, ObjectLostError))


# ---------------------------------------------------------------- scheduling
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
            if not _is_lost_work(err):
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
        log.warning("generator %d lost %d in-flight requests (%s); re-queued while it restarts",
                    batch.generator, len(batch.requests), type(err).__name__)
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
            if not _is_lost_work(err):
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


# ---------------------------------------------------------------- the job
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
    from engine.data.shards import read_commits

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
