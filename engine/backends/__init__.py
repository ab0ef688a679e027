"""Generator backends (hf, vllm, replay) behind one interface; see base.py."""
from engine.backends.base import Backend, available, create, register

__all__ = ["Backend", "available", "create", "register"]
