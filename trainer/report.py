"""Markdown and PNG report helpers (matplotlib, Agg backend: no display needed).

General on purpose: evaluation uses them for one model, the round loop for a series of rounds.
Each plot function writes one PNG and returns its path; Markdown helpers return strings that a
caller joins with `write_markdown`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


# ---------------------------------------------------------------- Markdown
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, None and NaN as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def image_link(path: str | Path, relative_to: str | Path, alt: str = "") -> str:
    rel = Path(path).resolve().relative_to(Path(relative_to).resolve())
    return f"![{alt or rel.stem}]({rel.as_posix()})"


def write_markdown(path: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """# title, then one `## heading` + body per section."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], rows: Sequence[str], columns: Sequence[str],
                          path: str | Path, title: str = "Confusion matrix") -> Path:
    """Counts with gold labels as rows and predictions as columns; each cell annotated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * max(len(columns), 2), 1.0 + 0.7 * max(len(rows), 2)))
    data = [list(r) for r in matrix] or [[0] * len(columns)]
    image = ax.imshow(data, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    peak = max((max(r) for r in data if r), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def _label_bar_axes(ax, names: Sequence[str], title: str, ylabel: str, ylim: tuple[float, float] | None, *,
                    crowded_after: int, rotation: int) -> None:
    """Bar names under the bars (slanted when there are more than `crowded_after`), labels, y range."""
    crowded = len(names) > crowded_after
    ax.set_xticks(range(len(names)), labels=names, rotation=rotation if crowded else 0,
                  ha="right" if crowded else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)


def plot_bars(values: Mapping[str, float | None], path: str | Path, title: str, ylabel: str,
              ylim: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """One bar per key (None drawn as an empty slot), value printed above each bar."""
    plt = _pyplot()
    names = list(values)
    heights = [0.0 if values[k] is None else float(values[k]) for k in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) + 1.5), 3.5))
    bars = ax.bar(range(len(names)), heights, color="tab:blue")
    _label_bar_axes(ax, names, title, ylabel, ylim, crowded_after=6, rotation=45)
    for bar, key in zip(bars, names):
        ax.annotate(fmt(values[key], 2), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    return _save(fig, path)


def plot_lines(x: Sequence[float], series: Mapping[str, Sequence[float | None]], path: str | Path, title: str,
               xlabel: str, ylabel: str) -> Path:
    """Several named series over a shared x (e.g. metrics per round); None values leave gaps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for name, ys in series.items():
        ax.plot(list(x), [math.nan if y is None else y for y in ys], marker="o", label=name)
    ax.set_xticks(list(x))  # one tick per point: rounds are whole numbers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_interval_bars(values: Mapping[str, float | None], intervals: Mapping[str, Sequence[float] | None],
                       path: str | Path, title: str, ylabel: str, colors: Mapping[str, str] | None = None,
                       legend: Mapping[str, str] | None = None, ylim: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """One bar per key with its interval [lo, hi] as an error bar (None: no bar, no error bar); bars
    may be coloured by key (e.g. a control arm apart from the stages) and the colours named in a
    legend (label -> colour); value printed above each."""
    plt = _pyplot()
    names = list(values)
    heights = [math.nan if values[k] is None else float(values[k]) for k in names]
    spans = [intervals.get(k) for k in names]
    below = [0.0 if s is None or math.isnan(h) else max(h - s[0], 0.0) for h, s in zip(heights, spans)]
    above = [0.0 if s is None or math.isnan(h) else max(s[1] - h, 0.0) for h, s in zip(heights, spans)]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(names) + 1.5), 3.8))
    bars = ax.bar(range(len(names)), [0.0 if math.isnan(h) else h for h in heights],
                  yerr=[below, above], capsize=4, ecolor="black",
                  color=[(colors or {}).get(k, "tab:blue") for k in names])
    _label_bar_axes(ax, names, title, ylabel, ylim, crowded_after=5, rotation=30)
    ax.grid(axis="y", alpha=0.3)
    if legend:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=color, label=label) for label, color in legend.items()], fontsize=8,
                  loc="upper left")
    for bar, key, top in zip(bars, names, above):
        ax.annotate(fmt(values[key], 2), (bar.get_x() + bar.get_width() / 2, bar.get_height() + top),
                    ha="center", va="bottom", fontsize=8)
    return _save(fig, path)


def save_thumbnail(image: bytes, path: str | Path, size: int = 128) -> Path:
    """An encoded image -> a PNG at most `size` pixels on its longer side."""
    import io

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(image)) as picture:
        thumb = picture.convert("RGB")
        thumb.thumbnail((size, size))
        thumb.save(path, format="PNG")
    return path
