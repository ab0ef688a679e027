"""What every benchmark shares: the machine description, shared inputs (tiny model, synthetic faces),
a table printer, and the dated entry appended to BENCHMARKS.md.

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
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# Inputs shared by several benchmarks are built once here (same seed -> same bytes).
CACHE = Path(os.environ.get("FEA_BENCH_CACHE", "/tmp/fea-bench-cache"))
ENTRY_DATE = os.environ.get("FEA_BENCH_DATE", "2026-11-26")

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


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['cores']} cores, {info['cpu']}; GPU: {info['gpu']}; Python {info['python']}, "
            f"torch {info['torch']}")


# ---------------------------------------------------------------- tables
def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table (also readable in a terminal)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    head = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([head, rule, *body])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    print(f"\n## {title}\n{table(rows, columns)}\n", flush=True)


# ---------------------------------------------------------------- BENCHMARKS.md
def command_line() -> str:
    """How this benchmark was started, repeatable from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def append_entry(name: str, command: str, machine_info: dict[str, Any], rows: Sequence[dict[str, Any]],
                 ratios: Sequence[dict[str, Any]], notes: Iterable[str] = (), columns: Sequence[str] | None = None,
                 path: Path = BENCHMARKS_MD) -> str:
    """Append one dated Markdown section to BENCHMARKS.md; returns the text appended."""
    load_end = load()
    lines = [f"## {ENTRY_DATE} · {name}", "",
             f"- Command: `{command}`",
             f"- Machine: {machine_line(machine_info)}",
             f"- Load average (1/5/15 min) at start {machine_info['load_avg_start']}, at end {load_end}",
             "", table(rows, columns), ""]
    if ratios:
        lines += ["Ratios (candidate over baseline, measured in the same process):", "",
                  table(ratios), ""]
    notes = list(notes)
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines) + "\n"
    if not path.exists():
        path.write_text("# Benchmarks\n\nEach section is appended by a script in `bench/` (see README); "
                        "ratios compare a baseline and a candidate run alternately in one process.\n\n")
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
    return text


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
