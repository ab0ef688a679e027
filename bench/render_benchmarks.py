"""BENCHMARKS.md from the run records in bench/results/*.jsonl.

    .venv/bin/python bench/render_benchmarks.py             # rewrite BENCHMARKS.md
    .venv/bin/python bench/render_benchmarks.py --check     # exit 1 if BENCHMARKS.md is not the rendering
    .venv/bin/python bench/render_benchmarks.py --history   # every run and analysis, oldest first, as Markdown

A record is one run of one benchmark script: date, command, machine, load, the result rows, the ratios
(candidate over a baseline measured in the same process) and notes. The page shows, per target in
bench/targets.py, the figure of the latest run that measures it, with that run's machine and command.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tables import cell, table  # noqa: E402
from bench.targets import DIAGNOSTICS, TARGETS, Target  # noqa: E402

SCHEMA = 1
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PAGE = REPO / "BENCHMARKS.md"
ANALYSES = "analyses.jsonl"


# ---------------------------------------------------------------- records
def append_record(record: dict[str, Any], results: Path = RESULTS) -> Path:
    """Append a run record to bench/results/<bench>.jsonl (one file per benchmark script)."""
    path = results / f"{record['bench']}.jsonl"
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=plain) + "\n")
    return path


def plain(value: Any) -> Any:
    """JSON for the odd values a result row may hold (numpy scalars, paths)."""
    return value.item() if hasattr(value, "item") else str(value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_runs(results: Path = RESULTS) -> list[dict[str, Any]]:
    """Every run record, oldest first (by date, then by order within its file)."""
    runs = [r for path in sorted(results.glob("*.jsonl")) if path.name != ANALYSES for r in read_jsonl(path)]
    return sorted(runs, key=lambda r: r.get("recorded_at") or r["date"])


def load_analyses(results: Path = RESULTS) -> list[dict[str, Any]]:
    path = results / ANALYSES
    return read_jsonl(path) if path.exists() else []


# ---------------------------------------------------------------- one run as Markdown
def machine_line(machine: dict[str, Any]) -> str:
    if "description" in machine:
        return machine["description"]
    return (f"{machine['cores']} cores, {machine['cpu']}; GPU: {machine['gpu']}; Python {machine['python']}, "
            f"torch {machine['torch']}")


def entry_markdown(record: dict[str, Any]) -> str:
    """A run as the dated section the benchmark scripts used to append (hand-written runs keep their text)."""
    heading = f"## {record['date']} · {record['name']}"
    if "text" in record:
        return f"{heading}\n\n{record['text']}\n"
    load = record["load_avg"]
    lines = [heading, "", f"- Command: `{record['command']}`", f"- Machine: {machine_line(record['machine'])}",
             f"- Load average (1/5/15 min) at start {tuple(load['start'])}, at end {tuple(load['end'])}",
             "", table(record["rows"], record["columns"]), ""]
    if record["ratios"]:
        lines += ["Ratios (candidate over baseline, measured in the same process):", "",
                  table(record["ratios"]), ""]
    if record["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in record["notes"]] + [""]
    return "\n".join(lines) + "\n"


def history_markdown(runs: Iterable[dict[str, Any]], analyses: Iterable[dict[str, Any]]) -> str:
    parts = ["# Benchmark history\n"]
    parts += [f"## {a['date']} · {a['title']}\n\n{a['text']}\n" for a in analyses]
    parts += [entry_markdown(r) for r in runs]
    return "\n".join(parts)


# ---------------------------------------------------------------- the page
def latest_ratio(runs: list[dict[str, Any]], target: Target) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The latest run that measures the target, and its ratio row."""
    for record in reversed(runs):
        if target.matches(record):
            for ratio in record.get("ratios", []):
                if ratio["metric"] in target.metrics:
                    return record, ratio
    return None


def latest_run(runs: list[dict[str, Any]], bench: str, name: str) -> dict[str, Any] | None:
    return next((r for r in reversed(runs) if r["bench"] == bench and r["name"].startswith(name)), None)


class Machines:
    """Short labels (M1, M2, ...) for the machines the page's runs ran on, in order of first use."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def label(self, record: dict[str, Any]) -> str:
        line = machine_line(record.get("machine", {}))
        if line not in self.lines:
            self.lines.append(line)
        return f"M{self.lines.index(line) + 1}"

    def markdown(self) -> str:
        return "\n".join(f"- M{i}: {line}" for i, line in enumerate(self.lines, 1))


def load_start(record: dict[str, Any]) -> str:
    load = record.get("load_avg")
    return f"{load['start'][0]}" if load else "-"


def figure(target: Target, ratio: dict[str, Any]) -> str:
    return target.show.format(**{k: cell(v) for k, v in ratio.items()})


def targets_section(runs: list[dict[str, Any]], machines: Machines) -> tuple[list[str], list[str]]:
    """The targets table, and a line on what limits each missed target."""
    rows, misses = [], []
    for target in TARGETS:
        found = latest_ratio(runs, target)
        if found is None:
            rows.append({"target": target.title, "current": "not measured yet", "goal": target.goal, "met": "-",
                         "run": "-", "machine": "-", "load": "-", "command": "-"})
            continue
        record, ratio = found
        met = target.met(ratio)
        rows.append({"target": target.title, "current": figure(target, ratio), "goal": target.goal,
                     "met": {True: "yes", False: "no", None: "-"}[met], "run": record["date"],
                     "machine": machines.label(record), "load": load_start(record),
                     "command": f"`{record['command']}`"})
        if met is False and target.why:
            misses.append(f"- **{target.title}** ({figure(target, ratio)}, goal {target.goal}): {target.why}.")
    return [table(rows)], misses


def diagnostics_section(runs: list[dict[str, Any]], machines: Machines) -> list[str]:
    rows = []
    for bench, name in DIAGNOSTICS:
        record = latest_run(runs, bench, name)
        if record is None:
            continue
        ratios = "; ".join(f"{r['metric']}: {cell(r['ratio'])}" for r in record.get("ratios", []))
        rows.append({"measurement": record["name"], "latest ratios": ratios, "run": record["date"],
                     "machine": machines.label(record), "command": f"`{record['command']}`"})
    return [table(rows)] if rows else []


def gpu_section(runs: list[dict[str, Any]]) -> list[str]:
    """The latest run of each GPU script, tables included (they are short)."""
    parts = []
    for bench in sorted({r["bench"] for r in runs if r["bench"].startswith("gpu")}):
        record = latest_run(runs, bench, "")
        parts.append(f"### {record['name']} ({record['date']})\n\n- Command: `{record['command']}`\n"
                     f"- Machine: {machine_line(record.get('machine', {}))}\n")
        tables = record.get("tables") or [{"columns": record["columns"], "rows": record["rows"]}]
        parts += [table(t["rows"], t["columns"]) + "\n" for t in tables]
    return parts


def history_section(runs: list[dict[str, Any]], analyses: list[dict[str, Any]]) -> list[str]:
    counts = {}
    for record in runs:
        counts[record["bench"]] = counts.get(record["bench"], 0) + 1
    files = ", ".join(f"`{bench}.jsonl` ({n})" for bench, n in sorted(counts.items()))
    first = runs[0]["date"] if runs else "-"
    titles = "; ".join(f"{a['date']} · {a['title']}" for a in analyses)
    return [f"{len(runs)} runs since {first}, one JSON record per line in `bench/results/`: {files}. "
            "A record holds the date, the benchmark, the command, the machine, the load average at start and "
            "end, the result rows, the ratios and the notes.",
            "",
            f"Analyses of the figures (profiles, what was tried and dropped) are in `{ANALYSES}`: {titles}.",
            "",
            "Everything, oldest first, as Markdown: `.venv/bin/python bench/render_benchmarks.py --history`."]


def page_markdown(runs: list[dict[str, Any]], analyses: list[dict[str, Any]]) -> str:
    machines = Machines()
    targets, misses = targets_section(runs, machines)
    diagnostics = diagnostics_section(runs, machines)
    parts = ["# Benchmarks", "",
             "Generated by `bench/render_benchmarks.py` from the run records in `bench/results/` (each benchmark "
             "script appends its record and renders this page again); targets and the lines on misses are in "
             "`bench/targets.py`. Ratios compare a baseline and a candidate run alternately in one process, "
             "because absolute rates on a shared machine drift by the hour. Load is the 1-minute load average "
             "at the run's start.", "",
             "## Targets: the latest run of each", "", *targets, "",
             "Machines:", "", "", "", "## Why the misses", "", *(misses or ["None."]), "",
             "## Diagnostics (no target)", "", *diagnostics, "",
             "## On a GPU", "", *gpu_section(runs),
             "## History", "", *history_section(runs, analyses), ""]
    parts[parts.index("Machines:") + 2] = machines.markdown()
    return "\n".join(parts)


def write_page(results: Path = RESULTS, page: Path = PAGE) -> str:
    text = page_markdown(load_runs(results), load_analyses(results))
    page.write_text(text, encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description="BENCHMARKS.md from bench/results/*.jsonl")
    parser.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md is not the rendering")
    parser.add_argument("--history", action="store_true", help="print every run and analysis as Markdown")
    args = parser.parse_args()
    if args.history:
        print(history_markdown(load_runs(), load_analyses()))
        return 0
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != page_markdown(load_runs(), load_analyses()):
            print("BENCHMARKS.md is not the rendering of bench/results; run bench/render_benchmarks.py")
            return 1
        return 0
    write_page()
    return 0


if __name__ == "__main__":
    sys.exit(main())
