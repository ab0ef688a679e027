"""The generator backends by name: adding a backend is its module plus one line here.

The names are also the choices of `generation.backend` in the config and of `--backend` on the command
line. The modules are imported only when a backend is created, so choosing `hf` never imports vLLM,
and this table imports nothing, so the config can read it.
"""
from __future__ import annotations

import importlib

BACKENDS = {  # name -> "module:class"
    "hf": "engine.backends.hf:HFBackend",
    "vllm": "engine.backends.vllm:VLLMBackend",
    "replay": "engine.backends.replay:ReplayBackend",
}


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ValueError(f"unknown generator backend {name!r}; known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)
