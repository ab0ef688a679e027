"""Input of a synthesis job: its identity (what OUT/job.json pins), the partitions of the input
that still need work, and the thread that reads them ahead of the scheduler."""
from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator

from engine.core.config import ConfigError, SynthConfig
from engine.core.types import PartitionCommit, sha256_hex
from engine.data import storage
from engine.synth.partition import InputChangedError, Partition, cut_partitions

# Settings that change how fast a job runs, not what it produces: free to differ between reruns.
OPERATIONAL_KEYS = frozenset({
    "generators", "filters", "progress", "inflight_batches_per_generator", "generator_num_cpus",
    "generator_num_gpus", "generation.batch_size", "generation.max_num_seqs", "generation.max_model_len",
    "generation.gpu_memory_utilization", "generation.enforce_eager",
})
PREFETCH_PARTITIONS = 16  # partitions read ahead of the scheduler (memory: their images)


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
