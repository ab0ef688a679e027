"""The targets BENCHMARKS.md reports: which recorded ratio measures each one, and what it must reach.

A target reads one ratio row (`metric`) of the latest run of its benchmark whose command matches
`flags` (a flag missing from a command counts as its default in FLAG_DEFAULTS). `metrics` lists the
names the metric had over time, so older runs still match.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

# The benchmark scripts' defaults for the flags that targets select on.
FLAG_DEFAULTS = {"--generators": "1", "--input": "dataset", "--decode-cache-mb": "0"}


@dataclass(frozen=True)
class Target:
    title: str
    bench: str                      # the results file: bench/results/<bench>.jsonl
    run: str                        # how the run's name starts ("synthesis throughput")
    metrics: tuple[str, ...]        # the ratio row's metric, current name first
    goal: str                       # as the page shows it
    show: str                       # the figure, formatted from the ratio row (ratio, candidate, baseline)
    value: str = "ratio"            # the ratio row's field compared with the threshold
    threshold: float | None = None
    lower_is_better: bool = False
    flags: dict[str, str] = field(default_factory=dict)
    why: str = ""                   # one line on what limits it, shown while it is missed

    def met(self, ratio: dict[str, Any]) -> bool | None:
        if self.threshold is None:
            return None
        value = float(ratio[self.value])
        return value <= self.threshold if self.lower_is_better else value >= self.threshold

    def matches(self, record: dict[str, Any]) -> bool:
        if record.get("bench") != self.bench or not record.get("name", "").startswith(self.run):
            return False
        given = command_flags(record.get("command", ""))
        return all(given.get(flag, FLAG_DEFAULTS.get(flag)) == want for flag, want in self.flags.items())


def command_flags(command: str) -> dict[str, str]:
    """`--flag value` pairs of a command line (a flag without a value maps to "")."""
    words = shlex.split(command)
    flags = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            following = words[i + 1] if i + 1 < len(words) else ""
            flags[word] = "" if following.startswith("--") else following
    return flags


_KV_FLOOR = ("decode reads each retry's fp32 KV history: about 0.21 s per sample of memory-bound work on one "
             "core (a floor near 4.7 samples/s), plus eager PyTorch's per-step dispatch; compiling the step "
             "recompiled per cache length and changed greedy tokens")
_VLLM_CPU = ("vLLM's CPU attention kernel spends 57% of its worker reading the retry history, and each "
             "generator's engine core and front end take a third of a core that the one-process baseline "
             "does not spend")

TARGETS: tuple[Target, ...] = (
    Target("hf synthesis vs the paper's sequential loop, 1 generator (one core)", "synth", "synthesis throughput",
           ("hf: samples/s vs sequential baseline",), ">= 10x", "{ratio}x ({candidate} samples/s)",
           threshold=10, flags={"--generators": "1"}, why=_KV_FLOOR),
    Target("hf synthesis vs the sequential loop, 2 generators (both cores; the loop on one)", "synth",
           "synthesis throughput",
           ("hf: samples/s vs sequential baseline",), ">= 10x", "{ratio}x ({candidate} samples/s)",
           threshold=10, flags={"--generators": "2", "--decode-cache-mb": "0"}),
    Target("vllm synthesis vs the sequential loop, 1 generator", "synth", "synthesis throughput",
           ("vllm: samples/s vs sequential baseline",), ">= 20x", "{ratio}x ({candidate} samples/s)",
           threshold=20, flags={"--generators": "1"}, why=_VLLM_CPU),
    Target("vllm synthesis vs the sequential loop, 2 generators", "synth", "synthesis throughput",
           ("vllm: samples/s vs sequential baseline",), ">= 20x", "{ratio}x ({candidate} samples/s)",
           threshold=20, flags={"--generators": "2"}, why=_VLLM_CPU),
    Target("engine / bare transformers generate, tokens/s, retries off", "synth", "synthesis efficiency",
           ("hf: engine tokens/s vs bare hf", "hf: engine tokens/s vs bare backend"), ">= 0.9",
           "{ratio} ({candidate} tokens/s)", threshold=0.9),
    Target("engine / the engine's hf backend alone (no Ray, filter, writer)", "synth", "synthesis efficiency",
           ("hf: engine tokens/s vs bare hf backend",), ">= 0.9", "{ratio} ({candidate} tokens/s)",
           threshold=0.9),
    Target("engine / bare vLLM, tokens/s, retries off", "synth", "synthesis efficiency",
           ("vllm: engine tokens/s vs bare vllm", "vllm: engine tokens/s vs bare backend"), ">= 0.9",
           "{ratio} ({candidate} tokens/s)", threshold=0.9),
    Target("2 vs 1 hf generator actors", "synth", "synthesis scaling", ("hf: samples/s, 2 generators vs 1",), "-> 2",
           "{ratio}x ({baseline} -> {candidate} samples/s)"),
    Target("filter verifications/s on one core, strict policy", "filter", "filter throughput",
           ("strict: verifications/s on one core vs target",), ">= 10,000/s", "{candidate}/s",
           value="candidate", threshold=10_000),
    Target("WebDataset shard write / plain tar, local disk", "writer", "shard writer",
           ("local disk: write_webdataset MB/s vs plain tar",), ">= 0.8", "{ratio} ({candidate} MB/s)",
           threshold=0.8),
    Target("WebDataset shard write / plain tar, local S3", "writer", "shard writer",
           ("local S3 (SeaweedFS): write_webdataset MB/s vs plain tar",), ">= 0.8", "{ratio} ({candidate} MB/s)",
           threshold=0.8),
    Target("whole writer (tar + Parquet + commit) / plain tar, local disk", "writer", "shard writer",
           ("local disk: writer (tar + parquet + commit) MB/s vs plain tar",), ">= 0.8",
           "{ratio} ({candidate} MB/s)", threshold=0.8,
           why="it writes every image twice by design (tar and Parquet) and fsyncs three files per partition "
               "where the plain tar syncs none"),
    Target("whole writer (tar + Parquet + commit) / plain tar, local S3", "writer", "shard writer",
           ("local S3 (SeaweedFS): writer (tar + parquet + commit) MB/s vs plain tar",), ">= 0.8",
           "{ratio} ({candidate} MB/s)", threshold=0.8,
           why="two PUTs of the same images and a conditional PUT of the commit per partition, against one PUT"),
    Target("replay pipeline end to end, samples of an imported dataset", "pipeline", "pipeline overhead",
           ("end-to-end samples/s (wall) vs target",), ">= 2,000/s", "{candidate}/s", value="candidate",
           threshold=2_000, flags={"--input": "dataset"}),
    Target("replay pipeline end to end, from FEA-20K JSONL (every image decoded)", "pipeline", "pipeline overhead",
           ("end-to-end samples/s (wall) vs target",), ">= 2,000/s", "{candidate}/s", value="candidate",
           threshold=2_000, flags={"--input": "jsonl"},
           why="every input face is inflated to check it (about 80 us of the driver's input thread) in a run "
               "bounded by the two cores; on M2 the code from before the readable verifier missed it too "
               "(1,477 and 1,817/s in the same A/B)"),
    Target("SFT step time / plain TRL", "train", "training step time", ("sft: step time, fea train vs plain TRL",),
           "<= 1.1", "{ratio} ({candidate} s/step)", threshold=1.1, lower_is_better=True),
    Target("GRPO step time / plain TRL", "train", "training step time", ("grpo: step time, fea train vs plain TRL",),
           "<= 1.1", "{ratio} ({candidate} s/step)", threshold=1.1, lower_is_better=True),
)

# Measurements without a target, shown with their latest run's ratios: (bench, how the run's name starts).
DIAGNOSTICS: tuple[tuple[str, str], ...] = (
    ("synth", "synthesis anatomy"),
    ("synth", "synthesis retries"),
    ("synth", "synthesis decode-cache"),
    ("memory", "read bandwidth"),
    ("loop_overlap", "loop overlap (replay)"),
    ("loop_overlap", "loop overlap (hf)"),
)
