"""Generator backends (hf, vllm, replay) behind one interface (base.py), looked up by name (registry.py)."""
