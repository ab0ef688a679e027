"""Generator actor: hosts one backend (one per GPU on a cluster) and generates batches on request.

An async actor, so it can hold several batches at once: a backend with `generate_async` (vLLM)
serves them concurrently in one running batch; any other backend (hf) runs them one after another
on a single worker thread, which keeps the actor answering `ready`/`model_id` meanwhile.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import ray

from engine.core.config import GenerationConfig
from engine.core.types import Attempt, GenerationRequest, SamplingParams


@ray.remote
class GeneratorActor:
    """Created with `.options(num_cpus=..., num_gpus=..., max_restarts=-1)`; a restart reloads the model."""

    def __init__(self, backend: str, model: str | None, adapter: str | None, gen_cfg: dict,
                 dtype: str = "auto") -> None:
        self.backend_name = backend
        self.gen_cfg = GenerationConfig.model_validate(gen_cfg)
        self.dtype = dtype  # weights dtype, kept across reloads
        self.backend = None
        # one thread for model loading and blocking generation: one batch at a time, always the same
        # thread (torch's per-thread settings stay put)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fea-generator")
        self.active = 0  # generate calls in progress
        self.idle: asyncio.Condition | None = None  # made on the actor's event loop, at first use
        self.worker.submit(self._load, model, adapter).result()

    def _load(self, model: str | None, adapter: str | None) -> str:
        from engine.backends.base import create
        from engine.data import storage

        if self.backend is not None:
            self.backend.close()
            self.backend = None
        model_dir = storage.materialize(model) if model else None  # s3:// copied once per node
        adapter_dir = storage.materialize(adapter) if adapter else None
        self.backend = create(self.backend_name, model_dir, adapter_dir, self.gen_cfg, self.dtype)
        return self.backend.model_id

    def _condition(self) -> asyncio.Condition:
        if self.idle is None:
            self.idle = asyncio.Condition()
        return self.idle

    async def reload(self, model: str | None, adapter: str | None) -> str:
        """Swap in another model (the next round's checkpoint) once the batches in progress are done;
        returns its model id."""
        idle = self._condition()
        async with idle:
            await idle.wait_for(lambda: self.active == 0)
            self.active = -1  # generate calls wait until the new model is in
            try:
                return await asyncio.get_running_loop().run_in_executor(self.worker, self._load, model, adapter)
            finally:
                self.active = 0
                idle.notify_all()

    async def model_id(self) -> str:
        return self.backend.model_id

    async def ready(self) -> bool:
        return self.backend is not None

    async def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        idle = self._condition()
        async with idle:
            await idle.wait_for(lambda: self.active >= 0)
            self.active += 1
        try:
            if hasattr(self.backend, "generate_async"):
                return await self.backend.generate_async(requests, params)
            return await asyncio.get_running_loop().run_in_executor(self.worker, self.backend.generate,
                                                                    requests, params)
        finally:
            async with idle:
                self.active -= 1
                idle.notify_all()
