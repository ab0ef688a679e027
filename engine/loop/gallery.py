"""The run report's gallery: held-out faces with the final model's reasoning, and accepted synthesized
samples with their images. Thumbnails go to OUT/gallery/*.png; each function returns Markdown."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from trainer import report

SHOWN = 6
MAX_TEXT = 700  # characters of reasoning shown per sample


def pick_spread(rows: Sequence[Mapping[str, Any]], count: int = SHOWN) -> list[Mapping[str, Any]]:
    """Up to `count` rows, labelled ones first and one per gold label first, so that the gallery spans
    the emotions; shown in file order."""
    order = sorted(range(len(rows)), key=lambda i: not rows[i].get("gold_labels"))  # stable: file order kept
    first, rest, labels = [], [], set()
    for i in order:
        label = tuple(rows[i].get("gold_labels") or ())[:1]
        (rest if label in labels or not label else first).append(i)
        labels.add(label)
    return [rows[i] for i in sorted((first + rest)[:count])]


def _text_block(text: str) -> str:
    shown = text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " …"
    return "```text\n" + (shown.replace("```", "'''").strip() or "(empty output)") + "\n```"


def _names(values: Iterable[str], empty: str = "unknown") -> str:
    return ", ".join(values) or empty


def held_out_gallery(test_uri: str, prediction_rows: Sequence[Mapping[str, Any]], local: Path,
                     image_root: str | None = None, count: int = SHOWN) -> str:
    """Thumbnails of `count` held-out faces (read from the test set) with the model's output under each."""
    from engine.data.dataset import iter_samples

    wanted = {row["id"]: row for row in pick_spread(prediction_rows, count)}
    images = {}
    for sample in iter_samples(test_uri, image_root=image_root):
        if sample.id in wanted:
            images[sample.id] = sample.image
            if len(images) == len(wanted):
                break
    entries = []
    for i, (sample_id, row) in enumerate(wanted.items(), 1):
        if sample_id not in images:
            continue
        thumb = report.save_thumbnail(images[sample_id], local / "gallery" / f"test-{i}.png")
        verdict = {True: "correct", False: "wrong", None: "no gold label"}[row.get("correct")]
        entries.append(f"**{i}. `{sample_id}`**: gold {_names(row['gold_labels'])}, predicted "
                       f"{row.get('pred_label') or '(none)'} ({verdict}); gold AUs {_names(row['gold_aus'])}, "
                       f"predicted AUs {_names(row['pred_aus'], 'none')}\n\n"
                       f"{report.image_link(thumb, local, f'held-out face {i}')}\n\n{_text_block(row['completion'])}")
    return "\n\n".join(entries) or "No held-out image could be read."


def accepted_rows(synth_out: str, count: int) -> Iterator[dict[str, Any]]:
    """The first `count` accepted rows of a synthesis output (committed Parquet shards only)."""
    from engine.data.commits import committed_shard_uris
    from engine.data.shards import iter_parquet_rows

    columns = ["id", "image", "aus", "labels", "description", "provenance"]
    rows = (row for uri in committed_shard_uris(synth_out, "accepted", "parquet")
            for row in iter_parquet_rows(uri, batch_size=max(count, 1), columns=columns))
    return islice(rows, count)


def synthesized_gallery(synth_out: str | None, local: Path, round_index: int | None,
                        count: int = SHOWN) -> str:
    """Thumbnails of `count` accepted synthesized samples with the accepted reasoning under each."""
    rows = list(accepted_rows(synth_out, count)) if synth_out else []
    if not rows:
        return "No accepted synthesized sample to show."
    entries = []
    for i, row in enumerate(rows, 1):
        thumb = report.save_thumbnail(bytes(row["image"]), local / "gallery" / f"synth-{i}.png")
        attempts = (row.get("provenance") or {}).get("attempts")
        entries.append(f"**{i}. `{row['id']}`**: label {_names(row['labels'])}; AUs {_names(row['aus'])}; "
                       f"accepted at attempt {attempts if attempts is not None else '—'}\n\n"
                       f"{report.image_link(thumb, local, f'synthesized sample {i}')}\n\n"
                       f"{_text_block(row['description'])}")
    where = f"round {round_index}" if round_index is not None else "the last round"
    return f"Accepted by the verifier in {where}'s synthesis (labels and AUs are the pool's gold).\n\n" \
        + "\n\n".join(entries)
