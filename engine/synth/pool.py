"""The actors of a synthesis job: generators (possibly borrowed from a GeneratorFleet that
outlives the job), filters and the writer."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from engine.core.config import ConfigError, SynthConfig

# One logger for every part of a synthesis run (scheduler, pool, progress): `engine.synth.job`.
log = logging.getLogger("engine.synth.job")


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

    def release(self, wait_seconds: float = 60.0) -> None:
        """Kills the generators and waits until Ray reports their processes dead: Ray frees an actor's
        GPU in its books at once, but vLLM's start-up check in the next step reads the device's free
        memory, which only the process's exit returns."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        ids = {actor._actor_id.hex() for actor in self.actors}
        deadline = time.monotonic() + wait_seconds
        while ids and time.monotonic() < deadline:
            ids = {i for i in ids if (ray._private.state.actors(actor_id=i) or {}).get("State") != "DEAD"}
            if ids:
                time.sleep(0.2)
        if ids:
            log.warning("%d generator(s) not reported dead %.0fs after release", len(ids), wait_seconds)
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
        from engine.cluster.connect import ensure_ray

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


def is_lost_work(err: BaseException) -> bool:
    """True when a call failed because a process or node went away (its work can simply be redone),
    possibly seen through the filter task that consumed the dead generator's result."""
    from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

    while isinstance(err, RayTaskError) and not isinstance(err, (RayActorError, ObjectLostError)):
        cause = getattr(err, "cause", None)
        if cause is None or cause is err:
            break
        err = cause
    return isinstance(err, (RayActorError, ObjectLostError))
