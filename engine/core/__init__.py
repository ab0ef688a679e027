"""The core: records, config, vocabularies, prompts and the verifier (no torch, ray or vllm)."""
