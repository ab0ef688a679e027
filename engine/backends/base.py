"""The generator backend interface, `create`, and the helpers the backends share.

A backend turns backend-neutral GenerationRequests (chat messages + one image) into completions.
Backends are looked up by name in registry.py, which imports their modules only when one is created.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Protocol, runtime_checkable

from engine.backends.registry import backend_class
from engine.core.config import GenerationConfig
from engine.core.types import Attempt, GenerationRequest, SamplingParams


@runtime_checkable
class Backend(Protocol):
    name: str
    model_id: str  # provenance: which weights produced the completions

    def load(self, model_dir: str | None, adapter: str | None, gen_cfg: GenerationConfig,
             dtype: str = "auto") -> None: ...

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        """params.n Attempts per request, in request order.

        A backend that can serve several calls at once (vllm) also has `async generate_async(requests,
        params)` with the same result; the generator actor then runs its batches concurrently."""
        ...

    def close(self) -> None:
        """Free the model (before loading the next round's weights in the same process)."""
        ...


def create(name: str, model_dir: str | None = None, adapter: str | None = None,
           gen_cfg: GenerationConfig | None = None, dtype: str = "auto") -> Backend:
    """A loaded backend called `name` (model_dir is a local folder; adapter an optional LoRA folder;
    dtype as `model.dtype`: auto, float32, bfloat16, float16)."""
    backend = backend_class(name)()
    backend.load(model_dir, adapter, gen_cfg or GenerationConfig(backend=name), dtype)
    return backend


# ---------------------------------------------------------------- helpers shared by backends
def model_fingerprint(model_dir: str, adapter: str | None = None) -> str:
    """A short, stable id for provenance: folder name + hash of its config and weight file sizes.

    Hashing the weights themselves would read gigabytes; config + sizes tells checkpoints apart.
    """
    def describe(folder: str) -> list[Any]:
        entries: list[Any] = []
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                continue
            if name.endswith(".json"):
                with open(path, "rb") as f:
                    entries.append([name, hashlib.sha256(f.read()).hexdigest()])
            else:
                entries.append([name, os.path.getsize(path)])
        return entries

    parts = [describe(model_dir)] + ([describe(adapter)] if adapter else [])
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    label = os.path.basename(os.path.normpath(model_dir))
    if adapter:
        label += "+" + os.path.basename(os.path.normpath(adapter))
    return f"{label}@{digest}"


def decode_image(data: bytes):
    """PIL RGB image from encoded bytes (raises on undecodable data)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def error_attempts(request: GenerationRequest, backend: str, model_id: str, error: str, n: int) -> list[Attempt]:
    """n Attempts standing for a request that could not be generated, carrying the reason."""
    return [Attempt(sample_id=request.sample_id, attempt=request.attempt, backend=backend, model_id=model_id,
                    prompt_hash=request.prompt_hash, completion="", error=error) for _ in range(n)]
