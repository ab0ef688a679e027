"""Synthesis benchmarks (items 1-3): `fea synth` (run_synth) against the paper's sequential loop,
the engine against its bare backend, and 1 vs 2 generator actors.

Parts (`--part`, default all):
- throughput: finished samples/s and generated tokens/s of run_synth (hf and vllm backends) against
  bench/baseline_sequential.py on the same samples, same model, prompt, retry rule, max tokens,
  greedy, same acceptance policy; baseline and candidate alternate in this process.
- efficiency: the same attempt-0 prompts (with images) through the bare library (batched
  transformers generate / vLLM LLM.generate, no Ray, filter or writer) against run_synth with
  max_retries 0; ratio of generated tokens/s.
- scaling: run_synth (hf) with 1 and 2 generator actors of one CPU each.
- anatomy, retries: where the hf backend's time goes, per phase and per attempt.
- decode-cache: the hf backend's bound on a decode batch's KV (generation.decode_cache_mb) off and
  on, alternating, in one process or several at once (`--processes`).

Tokens: nothing forces a length. Both sides decode greedily from the same random model, which almost
never emits end-of-sequence, so nearly every attempt runs to max_new_tokens on both sides; the token
counts of each side are reported next to the rates so that this can be checked.

Candidate rates are the engine's steady rates (summary `run.steady_*`: wall time minus the actor
start-up, which includes model loading); the baseline excludes its model loading too. Ray is started
once by this script, so run_synth joins it instead of starting and stopping a cluster per run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from engine.core.config import GenerationConfig  # noqa: E402

PART_ITEMS = {"throughput": "item 1", "efficiency": "item 2", "scaling": "item 3",
              "anatomy": "where hf generation time goes", "retries": "what a retry costs in the hf backend",
              "decode-cache": "the hf backend's bound on a decode batch's KV"}
MAX_MODEL_LEN = 4096  # retries grow the prompt: attempt 6 carries five earlier completions
BARE_VLLM_KWARGS = dict(max_model_len=MAX_MODEL_LEN, enforce_eager=True, limit_mm_per_prompt={"image": 1, "video": 0},
                        seed=0, dtype="bfloat16")
DECODE_CACHE_MB = GenerationConfig.model_fields["decode_cache_mb"].default
DECODE_CACHE_TRIED_MB = 48  # the decode-cache part's bound when --decode-cache-mb leaves it off


# ---------------------------------------------------------------- engine runs
def synth_config(faces: Path, model: str, out: Path, *, backend: str, policy: str, max_new_tokens: int,
                 max_retries: int, generators: int = 1, generator_num_cpus: float = 1.0,
                 batch_size: int = 16, partition_size: int = 16,
                 decode_cache_mb: int = DECODE_CACHE_MB):
    from engine.core.config import ModelConfig, SynthConfig, VerifierConfig

    return SynthConfig(
        input=str(faces / "samples.jsonl"), image_root=str(faces), out=str(out), model=ModelConfig(path=model),
        generation=GenerationConfig(backend=backend, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    max_model_len=MAX_MODEL_LEN, decode_cache_mb=decode_cache_mb),
        verifier=VerifierConfig(policy=policy), generators=generators, generator_num_cpus=generator_num_cpus,
        max_retries=max_retries, partition_size=partition_size, progress="off")


def run_engine(cfg) -> dict[str, Any]:
    from engine.synth.job import run_synth

    t0 = time.perf_counter()
    summary = run_synth(cfg)
    run = summary["run"]
    steady = run.get("steady_seconds", summary["wall_seconds"] - run["startup_seconds"])
    return {"samples": run["samples"], "accepted": summary["accepted"], "rejected": summary["rejected"],
            "attempts": sum(int(k) * v for k, v in summary["attempts_histogram"].items()),
            "generated_tokens": run["generated_tokens"], "seconds": steady,
            "startup_s": run["startup_seconds"], "total_s": time.perf_counter() - t0,
            "samples_per_s": run["steady_samples_per_second"], "tokens_per_s": run["steady_generated_tokens_per_second"]}


# ---------------------------------------------------------------- part 1: throughput vs the paper's loop
def part_throughput(args, model: str) -> tuple[list[dict], list[dict], list[str]]:
    from bench.baseline_sequential import SequentialSynthesizer
    from engine.core.config import VerifierConfig

    faces_base = common.face_set(args.baseline_samples)
    faces_cand = common.face_set(args.samples)
    base_samples = common.load_samples(faces_base)
    baseline = SequentialSynthesizer(model)
    rows, ratios = [], []
    for backend in args.backends:
        base_runs, cand_runs = [], []
        for round_ in range(args.rounds):
            res = baseline.run(base_samples, verifier_cfg=VerifierConfig(policy=args.policy),
                               max_new_tokens=args.max_new_tokens, max_retries=args.max_retries,
                               out_path=common.fresh_dir("baseline") / "accepted.jsonl")
            base = {"samples": res.samples, "accepted": res.accepted, "rejected": res.rejected,
                    "attempts": res.attempts, "generated_tokens": res.generated_tokens, "seconds": res.wall_seconds,
                    "samples_per_s": res.samples_per_second, "tokens_per_s": res.tokens_per_second}
            base_runs.append(base)
            rows.append({"part": "throughput", "side": "baseline (batch 1)", "backend": "hf", "round": round_, **base})
            cfg = synth_config(faces_cand, model, common.fresh_dir(f"synth-{backend}"), backend=backend,
                               policy=args.policy, max_new_tokens=args.max_new_tokens, max_retries=args.max_retries,
                               generators=args.generators, generator_num_cpus=args.threads,
                               batch_size=args.batch_size, decode_cache_mb=args.decode_cache_mb)
            cand = run_engine(cfg)
            cand_runs.append(cand)
            rows.append({"part": "throughput", "side": f"fea synth, {args.generators} generator(s)", "backend": backend,
                         "round": round_, **cand})
            common.print_table(f"throughput {backend} round {round_}", rows[-2:])
        for metric, key in (("samples/s", "samples_per_s"), ("generated tokens/s", "tokens_per_s")):
            cand = common.median([r[key] for r in cand_runs])
            base = common.median([r[key] for r in base_runs])
            target = 10 if backend == "hf" else 20
            ratios.append(common.ratio_row(f"{backend}: {metric} vs sequential baseline", cand, base, f">= {target}x",
                                           cand / base >= target))
    notes = [f"Baseline: bench/baseline_sequential.py (batch 1, greedy, retries in place, filter after each "
             f"attempt, accepted rows written once at the end) on the first {args.baseline_samples} samples; "
             f"fea synth on {args.samples} samples of the same face set (seed 0). Both: tiny model, "
             f"max_new_tokens {args.max_new_tokens}, max_retries {args.max_retries}, policy {args.policy}, "
             f"label hint on.",
             f"Threads: the baseline process and each generator actor run torch with {args.threads} thread(s) "
             "(actors reserve that many Ray CPUs). On this shared 2-core machine 2 OpenMP threads made batched "
             "generate 4-5x slower than 1 thread (0.5-0.6 s vs 2.3-3.9 s per batch of 8 at load 4), so both "
             "sides get the same single thread.",
             f"fea synth: {args.generators} generator actor(s) of {args.threads} CPU(s) each (the baseline has one "
             f"process), batch_size {args.batch_size}, decode_cache_mb {args.decode_cache_mb} (hf), partition_size 16; "
             "rates exclude actor start-up and "
             "model load (reported as startup_s); the baseline's exclude its model load.",
             "The random tiny model is almost never accepted, so nearly every sample uses all attempts on both "
             "sides (see accepted/attempts columns): equal work per sample."]
    return rows, ratios, notes


# ---------------------------------------------------------------- part 2: engine vs bare backend
def first_prompts(faces: Path, n: int) -> list:
    from engine.core.prompts import make_request

    return [make_request(s, 0, hint=True) for s in common.load_samples(faces, limit=n)]


def _bare_rates(samples: int, tokens: int, seconds: float) -> dict[str, Any]:
    return {"samples": samples, "generated_tokens": tokens, "seconds": seconds, "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds}


def bare_hf(model: str, requests: list, max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """Batched transformers generate over the prompts, timed from encoded image bytes to token ids."""
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from engine.backends.tokens import blocked_token_ids

    processor = AutoProcessor.from_pretrained(model, padding_side="left")
    llm = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
    bad = [[t] for t in blocked_token_ids(processor, llm.config)]

    def once() -> dict[str, Any]:
        tokens = 0
        t0 = time.perf_counter()
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            images = [Image.open(io.BytesIO(r.image)).convert("RGB") for r in chunk]
            texts = [processor.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False)
                     for r in chunk]
            inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = llm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                   top_p=None, top_k=None, bad_words_ids=bad,
                                   pad_token_id=processor.tokenizer.pad_token_id,
                                   cache_implementation="static")  # preallocated: the fastest generate setting here
            tokens += _count_until_eos(out[:, inputs["input_ids"].shape[1]:].tolist(), llm.generation_config)
        seconds = time.perf_counter() - t0
        return _bare_rates(len(requests), tokens, seconds)

    return once


def bare_hf_backend(model: str, requests: list, max_new_tokens: int, batch_size: int) -> Any:
    """The engine's hf backend called in this process, batch by batch: the engine without Ray, filter
    and writer, so that its ratio is the cost of the pipeline around the backend."""
    from engine.backends.base import create
    from engine.core.types import SamplingParams

    backend = create("hf", model, None, GenerationConfig(backend="hf", batch_size=batch_size))
    params = SamplingParams(max_new_tokens=max_new_tokens)

    def once() -> dict[str, Any]:
        backend.prefix_cache.clear()  # every call runs the same prompts; a fresh generator has no KV kept
        t0 = time.perf_counter()
        tokens = sum(a[0].completion_tokens for start in range(0, len(requests), batch_size)
                     for a in backend.generate(requests[start:start + batch_size], params))
        seconds = time.perf_counter() - t0
        return _bare_rates(len(requests), tokens, seconds)

    return once


def _count_until_eos(rows: list[list[int]], generation_config) -> int:
    ids = generation_config.eos_token_id
    eos = set(ids if isinstance(ids, list) else [ids])
    total = 0
    for row in rows:
        stop = next((k for k, t in enumerate(row) if t in eos), None)
        total += len(row) if stop is None else stop + 1
    return total


def bare_vllm(model: str, requests: list, max_new_tokens: int) -> Any:
    """vLLM LLM.generate on all prompts at once (vLLM's own scheduling; its default max_num_seqs)."""
    import io

    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from PIL import Image
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from engine.backends.tokens import blocked_token_ids

    processor = AutoProcessor.from_pretrained(model)
    llm = LLM(model=model, tokenizer=model, **BARE_VLLM_KWARGS)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                            logit_bias={t: -100.0 for t in blocked_token_ids(processor)})

    def once() -> dict[str, Any]:
        # Every call runs the same prompts: without this, all but the first would find their prefill in
        # vLLM's prefix cache, which no engine run (a new generator actor each time) has.
        llm.reset_prefix_cache()
        t0 = time.perf_counter()
        prompts = [{"prompt": processor.apply_chat_template(list(r.messages), add_generation_prompt=True,
                                                            tokenize=False),
                    "multi_modal_data": {"image": Image.open(io.BytesIO(r.image)).convert("RGB")}}
                   for r in requests]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        return _bare_rates(len(requests), tokens, seconds)

    once.llm = llm  # kept alive by the caller while the engine runs (idle)
    return once


EFFICIENCY_PARTITION_SIZE = 64  # SynthConfig's default


def part_efficiency(args, model: str) -> tuple[list[dict], list[dict], list[str]]:
    faces = common.face_set(args.efficiency_samples)
    requests = first_prompts(faces, args.efficiency_samples)
    rows, ratios, notes = [], [], []
    for backend in args.backends:
        # hf: transformers generate (the library) and the engine's own hf backend alone (no pipeline)
        bares = ({"hf": bare_hf(model, requests, args.max_new_tokens, args.batch_size),
                  "hf backend": bare_hf_backend(model, requests, args.max_new_tokens, args.batch_size)}
                 if backend == "hf" else {"vllm": bare_vllm(model, requests, args.max_new_tokens)})
        for bare in bares.values():
            bare()  # warm-up (first-call allocations, vLLM's first-batch profiling)
        bare_runs: dict[str, list[dict]] = {name: [] for name in bares}
        eng_runs = []
        for round_ in range(args.rounds):
            for name, bare in bares.items():
                b = bare()
                bare_runs[name].append(b)
                rows.append({"part": "efficiency", "side": f"bare {name}", "backend": backend, "round": round_, **b})
            cfg = synth_config(faces, model, common.fresh_dir(f"eff-{backend}"), backend=backend, policy=args.policy,
                               max_new_tokens=args.max_new_tokens, max_retries=0, batch_size=args.batch_size,
                               generator_num_cpus=args.threads, partition_size=EFFICIENCY_PARTITION_SIZE)
            e = run_engine(cfg)
            eng_runs.append(e)
            rows.append({"part": "efficiency", "side": "fea synth, retries off", "backend": backend,
                         "round": round_, **e})
            common.print_table(f"efficiency {backend} round {round_}", rows[-len(bares) - 1:])
        cand = common.median([r["tokens_per_s"] for r in eng_runs])
        for name, runs in bare_runs.items():
            base = common.median([r["tokens_per_s"] for r in runs])
            target = ">= 0.9" if name == backend else "- (pipeline overhead)"
            ratios.append(common.ratio_row(f"{backend}: engine tokens/s vs bare {name}", cand, base, target,
                                           cand / base >= 0.9 if name == backend else None))
        del bares
    notes.append(f"Same {args.efficiency_samples} attempt-0 prompts (label hint, one 112x112 image each), greedy, "
                 f"max_new_tokens {args.max_new_tokens}. Bare hf: transformers generate in batches of "
                 f"{args.batch_size}, fp32, {args.threads} torch thread(s), timed from image bytes to token ids. Bare hf "
                 "backend: the engine's hf backend (its own prefill and batched decoding) called in this process in "
                 "the same batches, its KV kept for retries emptied before each call. Bare vllm: one "
                 f"LLM.generate over all prompts, vLLM defaults otherwise ({BARE_VLLM_KWARGS}). Engine: run_synth "
                 f"with max_retries 0, 1 generator actor with {args.threads} CPU(s), batch_size {args.batch_size}, "
                 f"partition_size {EFFICIENCY_PARTITION_SIZE}; steady rate (start-up excluded). A warm-up call of the bare "
                 "backend is not counted, and vLLM's prefix cache is emptied before each bare call (the engine starts "
                 "a new generator, with an empty cache, for every run).")
    return rows, ratios, notes


# ---------------------------------------------------------------- part 3: generator scaling
def part_scaling(args, model: str) -> tuple[list[dict], list[dict], list[str]]:
    faces = common.face_set(args.samples)
    rows, ratios = [], []
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for generators in (1, 2):
            cfg = synth_config(faces, model, common.fresh_dir(f"scale-{generators}"), backend="hf", policy=args.policy,
                               max_new_tokens=args.max_new_tokens, max_retries=args.max_retries,
                               generators=generators, generator_num_cpus=1.0, batch_size=args.batch_size,
                               decode_cache_mb=args.decode_cache_mb)
            r = run_engine(cfg)
            runs[generators].append(r)
            rows.append({"part": "scaling", "side": f"{generators} generator(s) x 1 CPU", "backend": "hf",
                         "round": round_, **r})
        common.print_table(f"scaling round {round_}", rows[-2:])
    for metric, key in (("samples/s", "samples_per_s"), ("generated tokens/s", "tokens_per_s")):
        two = common.median([r[key] for r in runs[2]])
        one = common.median([r[key] for r in runs[1]])
        ratios.append(common.ratio_row(f"hf: {metric}, 2 generators vs 1", two, one, "-> 2.0 with 2x the cores"))
    notes = ["Scaling: hf backend, each generator actor reserves 1 CPU (torch gets 1 thread in it), so 2 "
             "generators use both cores of this machine; filter and writer actors reserve none. The GPU "
             "measurement (batch 1/16/64 generation, LoRA step) is bench/gpu_device.py."]
    return rows, ratios, notes


# ---------------------------------------------------------------- anatomy of an hf generate call
def part_anatomy(args, model: str) -> tuple[list[dict], list[dict], list[str]]:
    """Where hf generation time goes: the engine's hf backend in this process, batch 1 vs batch 16,
    prefill alone (1 new token) and with 64 / 256 new tokens, attempt-0 prompts."""
    from engine.backends.base import create
    from engine.core.types import SamplingParams

    requests = first_prompts(common.face_set(64), 16)
    backend = create("hf", model, None, GenerationConfig(backend="hf", batch_size=16))
    rows = []
    for batch in (1, 16):
        for new_tokens in (1, 64, 256):
            params = SamplingParams(max_new_tokens=new_tokens)
            backend.generate(requests[:batch], params)  # warm-up
            times = []
            for _ in range(args.rounds + 2):
                backend.prefix_cache.clear()  # else the repeated prompt is served from the KV kept for retries
                with common.stopwatch() as t:
                    out = backend.generate(requests[:batch], params)
                times.append(t["wall"])
            seconds = common.median(times)
            tokens = sum(a[0].completion_tokens for a in out)
            rows.append({"part": "anatomy", "batch": batch, "new_tokens": new_tokens, "prompt_tokens":
                         out[0][0].prompt_tokens, "seconds": seconds, "seconds_per_row": seconds / batch,
                         "tokens_per_s": tokens / seconds})
    by = {(r["batch"], r["new_tokens"]): r["seconds_per_row"] for r in rows}
    ratios = [common.ratio_row(f"seconds per row, batch 16 vs batch 1, {n} new token(s)", by[(16, n)], by[(1, n)],
                               "-") for n in (1, 64, 256)]
    notes = ["Engine hf backend called in this process (no Ray), fp32, "
             f"{args.threads} torch thread(s); median of {args.rounds + 2} calls after a warm-up. 1 new token = the "
             "prefill (vision encoder + prompt forward) alone."]
    backend.close()
    return rows, ratios, notes


def retries_setup(model: str, batch_size: int, decode_cache_mb: int):
    """The engine's hf backend in this process and the samples of one batch with their gold labels."""
    from engine.backends.base import create
    from engine.core.facs import label_set_for
    from engine.synth.judge import Gold

    samples = common.load_samples(common.face_set(64), limit=max(16, batch_size))
    golds = [Gold(s.aus, s.labels, label_set_for(s.dataset)) for s in samples]
    backend = create("hf", model, None, GenerationConfig(backend="hf", batch_size=batch_size,
                                                                  decode_cache_mb=decode_cache_mb))
    return backend, samples, golds


def run_attempts(backend, samples, golds, *, attempts: int, max_new_tokens: int, policy: str):
    """All attempts of the samples, each retry prompt built as the engine builds it (judge, outcome
    history): per attempt, its requests, results and the backend's counters before and after."""
    from engine.core.config import VerifierConfig
    from engine.synth.judge import judge
    from engine.synth.partition import Outcome
    from engine.core.prompts import make_request
    from engine.core.types import SamplingParams

    outcomes = [Outcome(s) for s in samples]
    counters = ("prompt_tokens", "reused_tokens", "prefill_seconds", "decode_seconds")
    for attempt in range(attempts):
        requests = [make_request(o.sample, attempt, hint=True, history=o.history()) for o in outcomes]
        before = {name: getattr(backend, name) for name in counters}
        out = backend.generate(requests, SamplingParams(max_new_tokens=max_new_tokens))
        spent = {name: getattr(backend, name) - before[name] for name in counters}
        for outcome, judged in zip(outcomes, judge(out, golds, VerifierConfig(policy=policy))):
            outcome.record(judged)
        yield attempt, requests, out, spent


def part_retries(args, model: str) -> tuple[list[dict], list[dict], list[str]]:
    """A batch of 16 samples through all six attempts: per attempt, prompt tokens, the share whose KV
    was kept from the previous attempt, and the prefill and decode time per row."""
    from engine.core.prompts import make_request
    from engine.core.types import SamplingParams

    backend, samples, golds = retries_setup(model, args.batch_size, args.decode_cache_mb)
    backend.generate([make_request(s, 0, hint=True) for s in samples], SamplingParams(max_new_tokens=8))  # warm-up
    backend.prefix_cache.clear()
    rows = []
    for attempt, requests, out, spent in run_attempts(backend, samples, golds, attempts=args.max_retries + 1,
                                                      max_new_tokens=args.max_new_tokens, policy=args.policy):
        rows.append({"part": "retries", "attempt": attempt, "rows": len(requests),
                     "prompt_tokens_per_row": spent["prompt_tokens"] // len(requests),
                     "from_kept_kv": round(spent["reused_tokens"] / spent["prompt_tokens"], 3),
                     "prefill_s_per_row": spent["prefill_seconds"] / len(requests),
                     "decode_s_per_row": spent["decode_seconds"] / len(requests),
                     "new_tokens_per_row": sum(a[0].completion_tokens for a in out) // len(requests)})
    backend.close()
    total = {k: sum(r[k] for r in rows) for k in ("prefill_s_per_row", "decode_s_per_row")}
    ratios = [common.ratio_row("share of a sample's generation time in decode", total["decode_s_per_row"],
                               total["decode_s_per_row"] + total["prefill_s_per_row"], "-")]
    notes = ["Engine hf backend in this process (no Ray), fp32, 1 torch thread, batch "
             f"{args.batch_size}, decode_cache_mb {args.decode_cache_mb}, greedy, "
             f"max_new_tokens {args.max_new_tokens}, policy {args.policy}; retry prompts carry the earlier "
             "completions and the verifier's reasons, as in fea synth. from_kept_kv: share of the prompt "
             "tokens whose KV came from the sample's previous attempt (the random model's completions do not "
             "re-tokenize to the tokens it generated, so the kept prefix ends early in each completion). "
             "Times are the backend's own prefill and decode timers, one call per attempt."]
    return rows, ratios, notes


# ---------------------------------------------------------------- the decode-cache bound, with and without
def decode_cache_ab(model: str, decode_cache_mb: int, rounds: int, max_new_tokens: int, policy: str) -> dict:
    """The six attempts' prompts of 16 samples, decoded again in alternating rounds with the bound off
    and on (the same backend, its kept KV emptied before each pass): decode seconds per pass and per
    attempt."""
    import torch

    from engine.core.types import SamplingParams

    torch.set_num_threads(1)
    backend, samples, golds = retries_setup(model, 16, decode_cache_mb)
    prompts = [requests for _, requests, _, _ in run_attempts(backend, samples, golds, attempts=6,
                                                              max_new_tokens=max_new_tokens, policy=policy)]
    bound, passes = backend.max_cache_tokens, {"no bound": [], "bound": []}
    for _ in range(rounds):
        for side in passes:
            backend.max_cache_tokens = bound if side == "bound" else None
            backend.prefix_cache.clear()
            per_attempt = []
            for requests in prompts:
                before = backend.decode_seconds
                backend.generate(requests, SamplingParams(max_new_tokens=max_new_tokens))
                per_attempt.append(backend.decode_seconds - before)
            passes[side].append(per_attempt)
    backend.close()
    return passes


def part_decode_cache(args, model: str) -> tuple[list[dict], list[dict], list[str]]:
    """generation.decode_cache_mb on and off, in this process alone or in `--processes` at once (as
    generator actors share a machine's cache)."""
    import multiprocessing as mp

    bound_mb = args.decode_cache_mb or DECODE_CACHE_TRIED_MB
    call = (model, bound_mb, args.rounds, args.max_new_tokens, args.policy)
    if args.processes == 1:
        results = [decode_cache_ab(*call)]
    else:
        with mp.get_context("spawn").Pool(args.processes) as pool:
            results = pool.starmap(decode_cache_ab, [call] * args.processes)
    rows, ratios = [], []
    for process, passes in enumerate(results):
        best = {side: min(passes[side], key=sum) for side in passes}
        for side, per_attempt in best.items():
            rows.append({"part": "decode-cache", "process": process, "side": side,
                         "decode_s_all_attempts": sum(per_attempt),
                         "decode_s_per_pass": " / ".join(f"{sum(p):.2f}" for p in passes[side]),
                         "ms_per_row_by_attempt": " ".join(f"{1e3 * s / 16:.0f}" for s in per_attempt)})
        ratios.append(common.ratio_row(f"process {process}: decode time, bound vs no bound (lower is better)",
                                       sum(best["bound"]), sum(best["no bound"]), "-"))
    notes = [f"Engine hf backend, fp32, 1 torch thread per process, {args.processes} process(es) at once; the "
             "prompts of six attempts of 16 samples (batch 16), recorded once, decoded again in "
             f"{args.rounds} alternating rounds without and with decode_cache_mb {bound_mb}. "
             "decode_s_all_attempts and ms_per_row_by_attempt are those of the pass with the least decode time "
             "of each side."]
    return rows, ratios, notes


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "throughput", "efficiency", "scaling", "anatomy", "retries",
                                           "decode-cache"],
                        default="all")
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    parser.add_argument("--samples", type=int, default=32, help="fea synth input samples (throughput, scaling)")
    parser.add_argument("--baseline-samples", type=int, default=4, help="samples the sequential baseline runs")
    parser.add_argument("--efficiency-samples", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decode-cache-mb", type=int, default=DECODE_CACHE_MB,
                        help="hf on CPU: MiB of KV per decode batch at most (generation.decode_cache_mb; 0 = no "
                             f"limit; the decode-cache part tries {DECODE_CACHE_TRIED_MB} then)")
    parser.add_argument("--generators", type=int, default=1, help="generator actors in the throughput part")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the baseline/bare process = CPUs per generator actor")
    parser.add_argument("--policy", choices=["strict", "paper"], default="strict")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of baseline and candidate")
    parser.add_argument("--processes", type=int, default=1, help="decode-cache part: processes at once")
    parser.add_argument("--no-record", action="store_true", help="print only; record nothing")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    from engine.cluster.connect import ensure_ray

    import torch

    torch.set_num_threads(args.threads)
    info = common.machine()
    model = common.tiny_model_dir()
    started = ensure_ray(num_cpus=os.cpu_count())
    parts = ["throughput", "efficiency", "scaling"] if args.part == "all" else [args.part]
    try:
        for part in parts:
            runner = {"throughput": part_throughput, "efficiency": part_efficiency, "scaling": part_scaling,
                      "anatomy": part_anatomy, "retries": part_retries, "decode-cache": part_decode_cache}[part]
            rows, ratios, notes = runner(args, model)
            common.print_table(f"synthesis: {part}", rows)
            common.print_table("ratios", ratios)
            if not args.no_record:
                common.record_run(f"synthesis {part} ({PART_ITEMS[part]})", common.command_line(), info, rows,
                                    ratios, notes)
            info["load_avg_start"] = common.load()
    finally:
        if started:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    main()
