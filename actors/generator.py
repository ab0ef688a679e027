"""Generator actor: hosts one backend (one per GPU on a cluster) and generates batches on request."""
from __future__ import annotations

import ray

from engine.config import GenerationConfig
from engine.types import Attempt, GenerationRequest, SamplingParams


@ray.remote
class GeneratorActor:
    """Created with `.options(num_cpus=..., num_gpus=..., max_restarts=-1)`; a restart reloads the model."""

    def __init__(self, backend: str, model: str | None, adapter: str | None, gen_cfg: dict) -> None:
        self.backend_name = backend
        self.gen_cfg = GenerationConfig.model_validate(gen_cfg)
        self.backend = None
        self.reload(model, adapter)

    def reload(self, model: str | None, adapter: str | None) -> str:
        """Swap in another model (the next round's checkpoint); returns its model id."""
        from engine import backends, storage

        if self.backend is not None:
            self.backend.close()
            self.backend = None
        model_dir = storage.materialize(model) if model else None  # s3:// copied once per node
        adapter_dir = storage.materialize(adapter) if adapter else None
        self.backend = backends.create(self.backend_name, model_dir, adapter_dir, self.gen_cfg)
        return self.backend.model_id

    def model_id(self) -> str:
        return self.backend.model_id

    def ready(self) -> bool:
        return self.backend is not None

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        return self.backend.generate(requests, params)
