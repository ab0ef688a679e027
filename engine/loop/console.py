"""The run's console: one line per stage and a short summary on the terminal; everything else in
OUT/run.log.

`setup_run_logging(run_dir)` sends logging and warnings to OUT/run.log; the terminal keeps warnings
and errors, except known noise from dependencies, which lands only in the log. `stage(name)` shows
the stage while it runs (a tqdm status line on a terminal), prints one line with its duration when it
ends, and sends whatever is written to stdout or stderr meanwhile (TRL's metric dicts, progress bars,
library prints, native code) to the log. `print_summary(summary)` prints the run's figures.

    console = setup_run_logging(run_dir)
    with stage("sft_seed"):
        ...
    print_summary(summary)
    close_run_logging()
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

LOG_NAME = "run.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Messages from dependencies that say nothing about the run; they stay in the log only.
KNOWN_NOISE = {
    "pin_memory on CPU": re.compile(r"'pin_memory' argument is set as true but no accelerator"),
    "CUDA_HOME": re.compile(r"CUDA_HOME"),
    "TRL's notice about the vLLM version": re.compile(r"TRL currently supports vLLM versions"),
    "accelerate: dataset had no length": re.compile(r"dataset had no length", re.IGNORECASE),
}


def is_known_noise(message: str) -> bool:
    return any(pattern.search(message) for pattern in KNOWN_NOISE.values())


PROJECT_LOGGERS = ("engine", "trainer", "actors", "__main__")
PROJECT_DIRS = tuple(str(Path(__file__).resolve().parents[1] / package) for package in ("engine", "trainer", "actors"))


def is_project_record(record: logging.LogRecord) -> bool:
    """A record from this project's code: its loggers, or a warning raised in its files."""
    if record.name == "py.warnings":
        return record.getMessage().startswith(PROJECT_DIRS)
    return record.name.split(".")[0] in PROJECT_LOGGERS


class TerminalFilter(logging.Filter):
    """What the terminal shows: errors from anywhere and warnings from this project, never known
    noise nor records marked `terminal=False` (already reported another way). Dependencies'
    other warnings stay in the log, counted in `hidden` so that a stage line can say how many."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "terminal", True) or is_known_noise(record.getMessage()):
            return False
        shown = record.levelno >= logging.ERROR or is_project_record(record)
        self.hidden += not shown
        return shown


class TqdmHandler(logging.StreamHandler):
    """Writes through tqdm.write, so a running stage line is cleared and redrawn below the message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


@dataclass
class RunConsole:
    """Where the run writes: the log file, and a handle on the real terminal that stages never capture."""

    log_path: Path
    log_stream: TextIO
    terminal: TextIO
    handlers: list[logging.Handler]
    terminal_filter: TerminalFilter
    moved: list[tuple[logging.Logger, logging.Handler, bool]] = field(default_factory=list)
    upload_to: str | None = None  # the run folder on S3: the log is copied there when logging closes
    stages: int = 0
    depth: int = 0


_active: RunConsole | None = None


def _terminal_copy() -> TextIO:
    """A stream on the process's stderr as it is now, which later fd redirections do not move."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr  # no file descriptor (e.g. a notebook): the stream itself


def _prints_itself(handler: logging.Handler, console: RunConsole) -> bool:
    """A plain stream handler on the terminal, or on the log file because it was made during a stage."""
    return type(handler) is logging.StreamHandler and handler not in console.handlers and getattr(
        handler, "stream", None) in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, console.log_stream}


def _route_library_loggers(console: RunConsole) -> None:
    """Library loggers that print themselves (e.g. transformers, ray) send their records to the root
    logger instead, i.e. to the log file and the filtered terminal handler."""
    loggers = [logging.getLogger(name) for name, obj in list(logging.root.manager.loggerDict.items())
               if isinstance(obj, logging.Logger)]
    for logger in loggers:
        for handler in [h for h in logger.handlers if _prints_itself(h, console)]:
            logger.removeHandler(handler)
            console.moved.append((logger, handler, logger.propagate))
            logger.propagate = True


def setup_run_logging(run_dir: str | Path, *, level: int = logging.INFO) -> RunConsole:
    """Log records (`level` and above) and warnings go to RUN_DIR/run.log (a local file that
    close_run_logging copies there when RUN_DIR is on S3); errors, and this project's warnings, also
    to the terminal (never known noise). Takes the place of the root logger's terminal handlers and
    of libraries' own; close_run_logging puts them back."""
    global _active
    from engine.data import storage

    if _active is not None:
        close_run_logging()
    upload_to = storage.join(str(run_dir), LOG_NAME) if storage.is_s3(run_dir) else None
    path = Path(tempfile.mkdtemp(prefix="fea-run-log-")) / LOG_NAME if upload_to else Path(run_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    log_stream = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - held for the run
    to_file = logging.StreamHandler(log_stream)
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    terminal = _terminal_copy()
    to_terminal = TqdmHandler(terminal)
    to_terminal.setLevel(logging.WARNING)
    terminal_filter = TerminalFilter()
    to_terminal.addFilter(terminal_filter)
    to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console = RunConsole(path, log_stream, terminal, [to_file, to_terminal], terminal_filter, upload_to=upload_to)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _prints_itself(h, console)]:
        root.removeHandler(handler)
        console.moved.append((root, handler, root.propagate))
    root.setLevel(level)
    for handler in console.handlers:
        root.addHandler(handler)
    _route_library_loggers(console)
    logging.captureWarnings(True)
    _active = console
    return console


def close_run_logging() -> None:
    """Undo setup_run_logging: handlers back where they were, warnings printed again, log closed (and
    copied to the run folder when that is on S3)."""
    global _active
    console, _active = _active, None
    if console is None:
        return
    logging.captureWarnings(False)
    root = logging.getLogger()
    for handler in console.handlers:
        root.removeHandler(handler)
    for logger, handler, propagate in reversed(console.moved):
        if handler.stream is console.log_stream:  # made during a stage: it would have printed to stderr
            handler.setStream(sys.stderr)
        logger.addHandler(handler)
        logger.propagate = propagate
    if console.terminal not in (sys.stderr, sys.__stderr__):
        console.terminal.close()
    console.log_stream.close()
    if console.upload_to:
        from engine.data import storage

        storage.write_bytes(console.upload_to, console.log_path.read_bytes())


# ---------------------------------------------------------------- stages
@contextlib.contextmanager
def _captured(console: RunConsole) -> Iterator[None]:
    """stdout and stderr -> the log file: Python's streams, and file descriptors 1 and 2 for native
    code, child processes and handlers that hold the original stream."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(console.log_stream.fileno(), fd)
    except OSError:
        pass  # a closed descriptor: Python-level capture still applies
    try:
        with contextlib.redirect_stdout(console.log_stream), contextlib.redirect_stderr(console.log_stream):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr, console.log_stream):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


class StageLine:
    """The handle `stage` yields: `note(text)` adds a few words (e.g. a score) to the stage's line."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{tqdm.format_interval(seconds)} ({seconds:.0f} s)"


def _stage_line(index: str, name: str, seconds: float, notes: list[str]) -> str:
    return f"{index}{name:<14} {_duration(seconds):>10}" + ("  " + "; ".join(notes) if notes else "")


@contextlib.contextmanager
def _nested_depth(console: RunConsole | None) -> Iterator[None]:
    """Only the outermost stage captures output; stages inside it are timed and printed."""
    if console is None:
        yield
        return
    console.depth += 1
    try:
        with _captured(console) if console.depth == 1 else contextlib.nullcontext():
            yield
    finally:
        console.depth -= 1


@contextlib.contextmanager
def stage(name: str) -> Iterator[StageLine]:
    """One line on the terminal for the stage, with its duration; its output goes to the log file.
    Without setup_run_logging it only times the stage and prints the line to stderr."""
    console = _active
    terminal = console.terminal if console else sys.stderr
    index = ""
    if console and console.depth == 0:
        console.stages += 1
        index = f"{console.stages:>2}. "
    line, started = StageLine(), time.monotonic()
    hidden = console.terminal_filter.hidden if console else 0
    log = logging.getLogger(__name__)
    log.info("stage %s: started", name)
    with tqdm(total=None, desc=f"{index}{name}", bar_format="{desc} ...", file=terminal, leave=False,
              disable=not _isatty(terminal)):  # a status line while the stage runs, on a terminal only
        try:
            with _nested_depth(console):
                yield line
        except BaseException as err:
            seconds = time.monotonic() - started
            log.error("stage %s failed after %.1f s", name, seconds, exc_info=True, extra={"terminal": False})
            where = f" (details in {console.log_path})" if console else ""
            tqdm.write(f"{index}{name:<14} failed after {_duration(seconds)}: {type(err).__name__}: {err}{where}",
                       file=terminal)
            raise
    seconds = time.monotonic() - started
    log.info("stage %s: done in %.1f s", name, seconds)
    hidden = console.terminal_filter.hidden - hidden if console else 0
    if hidden:
        line.note(f"{hidden} dependency warning{'s' * (hidden > 1)} in {LOG_NAME}")
    tqdm.write(_stage_line(index, name, seconds, line.notes), file=terminal)
    if console:
        _route_library_loggers(console)  # loggers that the stage's imports created


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------- the end of a run
def _interval(row: Mapping[str, Any], metric: str) -> str:
    value, span = row.get(metric), row.get(f"{metric}_ci95")
    if value is None:
        return "—"
    return f"{value:.3f} [{span[0]:.3f}, {span[1]:.3f}]" if span else f"{value:.3f}"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """A few lines: each stage's accuracy and AU F1 with 95% intervals, control vs final, acceptance
    per round, wall time, where the report and the log are."""
    from engine.loop.report import control_comparison

    rows = [*summary.get("stages", []), *([summary["control"]] if summary.get("control") else [])]
    lines = [f"Held-out evaluation on {summary.get('test_n', '?')} faces (95% bootstrap intervals):"]
    lines += [f"  {row['name']:<12} accuracy {_interval(row, 'emotion_accuracy'):<24} "
              f"AU F1 macro {_interval(row, 'au_macro_f1')}" for row in rows]
    comparison = control_comparison(summary.get("final"), summary.get("control"))
    if comparison:
        lines.append(comparison)
    synthesis = summary.get("synthesis") or []
    if synthesis:
        lines.append("Synthesis acceptance: " + ", ".join(
            f"round {s['round']} {_rate(s['acceptance'])} ({s['accepted']}/{s['inputs']})" for s in synthesis))
    ending = [f"wall time {_duration(float(summary['wall_seconds']))}"] if "wall_seconds" in summary else []
    ending += [f"report {summary['report']}"] if summary.get("report") else []
    ending += [f"log {_active.upload_to or _active.log_path}"] if _active else []
    if ending:
        text = "; ".join(ending)
        lines.append(text[0].upper() + text[1:])
    return lines


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def print_summary(summary: Mapping[str, Any]) -> str:
    """Print summary_lines to the terminal (past any stage capture); returns the text."""
    text = "\n".join(summary_lines(summary))
    terminal = _active.terminal if _active else sys.stderr
    tqdm.write(text, file=terminal)
    return text
