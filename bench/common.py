"""What every benchmark shares: the machine description, shared inputs (tiny model, synthetic faces),
a table printer, and the run record (bench/results/<script>.jsonl) from which BENCHMARKS.md is rendered.

Ratios are always taken between a baseline and a candidate measured in the same process, alternating,
because absolute times on a shared machine drift.
"""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from bench import render_benchmarks
from bench.tables import table

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# Inputs shared by several benchmarks are built once here (same seed -> same bytes).
CACHE = Path(os.environ.get("FEA_BENCH_CACHE", "/tmp/fea-bench-cache"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_description() -> str:
    try:
        import torch
    except ImportError:
        return "none (torch missing)"
    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(names)


def load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "gpu": gpu_description(),
        "python": platform.python_version(),
        "load_avg_start": load(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = "missing"
    return info


# ---------------------------------------------------------------- tables
def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    print(f"\n## {title}\n{table(rows, columns)}\n", flush=True)


# ---------------------------------------------------------------- records and BENCHMARKS.md
def command_line() -> str:
    """How this benchmark was started, repeatable from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def record_run(name: str, command: str, machine_info: dict[str, Any], rows: Sequence[dict[str, Any]],
               ratios: Sequence[dict[str, Any]], notes: Iterable[str] = (), columns: Sequence[str] | None = None,
               results: Path = render_benchmarks.RESULTS, page: Path = BENCHMARKS_MD) -> dict[str, Any]:
    """Append the run's record to bench/results/<script>.jsonl and render BENCHMARKS.md again."""
    now = datetime.now(timezone.utc)
    machine_only = {k: v for k, v in machine_info.items() if k != "load_avg_start"}
    record = {"schema": render_benchmarks.SCHEMA, "date": os.environ.get("FEA_BENCH_DATE", now.date().isoformat()),
              "recorded_at": now.isoformat(timespec="seconds"), "bench": bench_name(), "name": name,
              "command": command, "machine": machine_only,
              "load_avg": {"start": list(machine_info["load_avg_start"]), "end": list(load())},
              "columns": list(columns or (rows[0].keys() if rows else [])), "rows": [dict(r) for r in rows],
              "ratios": [dict(r) for r in ratios], "notes": list(notes)}
    results.mkdir(parents=True, exist_ok=True)
    render_benchmarks.append_record(record, results)
    render_benchmarks.write_page(results, page)
    return record


def bench_name() -> str:
    """The results file a run of this script goes to: bench/bench_synth.py -> synth."""
    return Path(sys.argv[0]).stem.removeprefix("bench_")


def ratio_row(metric: str, candidate: float, baseline: float, target: str, met: bool | None = None) -> dict[str, Any]:
    ratio = candidate / baseline if baseline else float("inf")
    return {"metric": metric, "candidate": candidate, "baseline": baseline, "ratio": round(ratio, 3),
            "target": target, "met": "yes" if met else ("no" if met is not None else "-")}


# ---------------------------------------------------------------- timing
@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """Wall and CPU seconds of the block: `with stopwatch() as t: ...; t["wall"], t["cpu"]`."""
    result: dict[str, float] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result["wall"] = time.perf_counter() - wall0
        result["cpu"] = time.process_time() - cpu0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- shared inputs
def tiny_model_dir() -> str:
    """The embedded tiny Qwen2.5-VL, built once into the bench cache."""
    from engine.demo.tinymodel import MARKER_FILE, build_tiny_model

    folder = CACHE / "tiny-model"
    if not (folder / MARKER_FILE).exists():
        build_tiny_model(folder, seed=0)
    return str(folder)


def face_set(n: int, seed: int = 0) -> Path:
    """DIR/samples.jsonl + DIR/images/ with n synthetic labelled faces (112x112), built once."""
    from engine.demo.faces import write_face_set

    folder = CACHE / f"faces-{n}-s{seed}"
    if not (folder / "samples.jsonl").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        write_face_set(tmp, n=n, seed=seed)
        tmp.rename(folder)
    return folder


def load_samples(faces_dir: Path, limit: int | None = None) -> list:
    """Samples of a face set in input order (quarantined records would be a broken input: fail)."""
    from engine.data.dataset import load_input
    from engine.core.types import Sample

    samples = []
    for record in load_input(str(faces_dir / "samples.jsonl"), str(faces_dir)):
        if not isinstance(record, Sample):
            raise RuntimeError(f"benchmark input quarantined: {record.reason}")
        samples.append(record)
        if limit is not None and len(samples) >= limit:
            break
    return samples


def fresh_dir(name: str) -> Path:
    """An empty scratch folder under the bench cache (each run writes to a new one)."""
    import tempfile

    CACHE.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=CACHE))
