"""BENCHMARKS.md is the rendering of the run records in bench/results, and a new run updates it."""
from __future__ import annotations

import json
import shutil
import sys

from bench import common
from bench import render_benchmarks as render

MACHINE = {"cores": 4, "cpu": "Test CPU", "gpu": "none", "python": "3.11.7", "torch": "2.14.1",
           "load_avg_start": (0.5, 0.4, 0.3)}


def _target_line(page: str, title: str) -> str:
    return next(line for line in page.splitlines() if line.startswith(f"| {title} "))


def test_committed_page_is_the_rendering_of_the_records():
    page = render.PAGE.read_text(encoding="utf-8")
    assert page == render.page_markdown(render.load_runs(), render.load_analyses())
    assert len(page.encode()) < 40_000


def test_every_target_has_a_recorded_figure():
    runs = render.load_runs()
    missing = [t.title for t in render.TARGETS if render.latest_ratio(runs, t) is None]
    assert missing == []


def test_a_recorded_run_becomes_the_current_figure(tmp_path, monkeypatch):
    results, page = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    shutil.copytree(render.RESULTS, results)
    before = len((results / "filter.jsonl").read_text().splitlines())
    monkeypatch.setattr(sys, "argv", ["bench/bench_filter.py"])
    ratio = common.ratio_row("strict: verifications/s on one core vs target", 9_000.0, 10_000, ">= 1.0", False)
    common.record_run("filter throughput (item 4)", ".venv/bin/python bench/bench_filter.py --items 5",
                      MACHINE, [{"policy": "strict", "verifications_per_s": 9_000.0}], [ratio], ["a note"],
                      results=results, page=page)

    lines = (results / "filter.jsonl").read_text().splitlines()
    assert len(lines) == before + 1
    record = json.loads(lines[-1])
    assert record["ratios"][0]["candidate"] == 9_000.0 and record["load_avg"]["start"] == [0.5, 0.4, 0.3]
    assert "load_avg_start" not in record["machine"]

    text = page.read_text()
    line = _target_line(text, "filter verifications/s on one core, strict policy")
    assert "| 9,000/s " in line and "| no " in line and "--items 5" in line
    assert "4 cores, Test CPU" in text
    # the other targets keep their figures from the committed records
    committed = render.PAGE.read_text()
    title = "SFT step time / plain TRL"
    assert _target_line(text, title) == _target_line(committed, title)


def test_history_keeps_every_run():
    runs = render.load_runs()
    history = render.history_markdown(runs, render.load_analyses())
    assert history.count("\n## ") == len(runs) + len(render.load_analyses())
    assert all(f"`{r['command']}`" in history for r in runs if "text" not in r)
