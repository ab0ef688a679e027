"""One-off: convert the dated Markdown log that BENCHMARKS.md used to be into bench/results/*.jsonl.

    .venv/bin/python bench/import_markdown_log.py OLD_BENCHMARKS.md

Entries written by bench/common.py are parsed into records (rows, ratios, notes, machine, load) and
must render back to their exact Markdown, or the import stops; hand-written entries keep their text
verbatim beside the tables parsed from it. Analyses (prose sections) go to analyses.jsonl. Kept to show
how the records of 2026-11-26 were derived from that log.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import render_benchmarks as render  # noqa: E402
from bench.tables import cell  # noqa: E402

HEADING = re.compile(r"^## (\d{4}-\d{2}-\d{2}) · (.+)$")
COMMAND = re.compile(r"^- Command: `(.+?)`")
MACHINE = re.compile(r"^(\d+) cores, (.*); GPU: (.*); Python (\S+), torch (\S+)$")
LOAD = re.compile(r"^- Load average \(1/5/15 min\) at start \((.*)\), at end \((.*)\)$")


def parse_value(text: str) -> Any:
    """The number (or dict) a table cell printed, where printing it again gives the same text."""
    candidates: list[Any] = []
    if re.fullmatch(r"-?\d+", text):
        candidates.append(int(text))
    if re.fullmatch(r"-?[\d,]*\.?\d+(e-?\d+)?", text):
        candidates.append(float(text.replace(",", "")))
    if text.startswith("{") and text.endswith("}"):
        try:
            candidates.append(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
    for value in candidates:
        if cell(value) == text:
            return value
    return text


def parse_table(lines: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    columns, body = split[0], split[2:]
    return columns, [dict(zip(columns, map(parse_value, row))) for row in body]


def tables_in(lines: list[str]) -> list[dict[str, Any]]:
    """Every Markdown table in a block of lines, as {columns, rows}."""
    found, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.startswith("|") and start is None:
            start = i
        elif not line.startswith("|") and start is not None:
            columns, rows = parse_table(lines[start:i])
            found.append({"columns": columns, "rows": rows})
            start = None
    return found


def machine_of(line: str) -> dict[str, Any]:
    match = MACHINE.match(line)
    if not match:
        return {"description": line}
    cores, cpu, gpu, python, torch = match.groups()
    return {"cores": int(cores), "cpu": cpu, "gpu": gpu, "python": python, "torch": torch}


def bench_of(command: str) -> str:
    match = re.search(r"bench/(\w+)\.(py|sh)", command)
    return match.group(1).removeprefix("bench_") if match else "other"


def standard_record(date: str, name: str, body: list[str]) -> dict[str, Any] | None:
    """The record of an entry that bench/common.py wrote, or None where the entry was written by hand."""
    if len(body) < 5 or not COMMAND.match(body[1]) or not body[2].startswith("- Machine: "):
        return None
    load = LOAD.match(body[3])
    if not load:
        return None
    tables = tables_in(body)
    notes = [line[2:] for line in body[body.index("Notes:") + 2:] if line.startswith("- ")] \
        if "Notes:" in body else []
    command = COMMAND.match(body[1]).group(1)
    return {"schema": render.SCHEMA, "date": date, "bench": bench_of(command), "name": name, "command": command,
            "machine": machine_of(body[2][len("- Machine: "):]),
            "load_avg": {"start": list(ast.literal_eval(f"({load.group(1)},)")),
                         "end": list(ast.literal_eval(f"({load.group(2)},)"))},
            "columns": tables[0]["columns"], "rows": tables[0]["rows"],
            "ratios": tables[1]["rows"] if len(tables) > 1 else [], "notes": notes}


def hand_record(date: str, name: str, body: list[str]) -> dict[str, Any]:
    text = "\n".join(body).strip("\n")
    command = COMMAND.search(text.replace("\n  ", " "))
    machine = re.search(r"^- (?:GPU m|M)achine: (.+)$", text, re.M)
    return {"schema": render.SCHEMA, "date": date, "bench": bench_of(command.group(1) if command else ""),
            "name": name, "command": command.group(1) if command else "",
            "machine": {"description": machine.group(1)} if machine else {}, "tables": tables_in(body),
            "text": text}


def sections(markdown: str) -> list[tuple[str, list[str]]]:
    """(heading, body lines) for every '## ' section."""
    found: list[tuple[str, list[str]]] = []
    for line in markdown.splitlines():
        if line.startswith("## "):
            found.append((line, []))
        elif found:
            found[-1][1].append(line)
    return found


def convert(markdown: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs, analyses = [], []
    for heading, body in sections(markdown):
        dated = HEADING.match(heading)
        if not dated:
            analyses.append({"schema": render.SCHEMA, "date": "2026-11-26", "title": heading[3:],
                             "text": "\n".join(body).strip("\n")})
            continue
        date, name = dated.groups()
        if name.startswith("summary"):
            analyses.append({"schema": render.SCHEMA, "date": date, "title": name,
                             "text": "\n".join(body).strip("\n")})
            continue
        record = standard_record(date, name, body)
        if record is not None:
            original = "\n".join([heading, *body]).strip("\n")
            again = render.entry_markdown(record).strip("\n")
            if again != original:
                raise SystemExit(f"{heading}: the record does not render back to the entry")
        runs.append(record if record is not None else hand_record(date, name, body))
    return runs, analyses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("markdown", type=Path)
    parser.add_argument("--out", type=Path, default=render.RESULTS)
    args = parser.parse_args()
    if any(args.out.glob("*.jsonl")):
        raise SystemExit(f"{args.out} already holds records: importing again would duplicate them")
    runs, analyses = convert(args.markdown.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    for record in runs:
        render.append_record(record, args.out)
    with (args.out / render.ANALYSES).open("a", encoding="utf-8") as f:
        for analysis in analyses:
            f.write(json.dumps(analysis, ensure_ascii=False) + "\n")
    print(f"{len(runs)} runs, {len(analyses)} analyses -> {args.out}")


if __name__ == "__main__":
    main()
