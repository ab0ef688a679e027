"""A FEA-20K-shaped multi-source fixture built from the synthetic faces, in the official record format
(one JSONL and one image folder per source, plus a sources.yaml manifest). It covers what real
sources bring: an emotion-only source (RAF-DB: no AUs), an AU-only source (DISFA: no labels, side
and intensity AU forms), a source with open labels and BP4D's AU30-AU39 (BP4D-gpt), the explicit
no-AU form, `question: null` and questions containing <image>, ids that collide across sources, and
meta_info whose shape differs from row to row.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

# Side and intensity forms, as annotations write them, for the AU-only source.
_MARKED = {"AU12": "R12A", "AU14": "L14B", "AU6": "AU6E", "AU4": "AU 4", "AU1": "au01"}
_OPEN_LABELS = {"sadness": "bittersweet", "fear": "confusion", "surprise": "Determination"}
_METAS = [{"style": {"one_sided": []}}, {"style": {"one_sided": ["left"]}, "frame": 3}, {"frame": "0003"}, {},
          {"annotator": [1, {"k": None}]}, {"style": "plain"}]


def _question(i: int) -> str | None:
    return [None, "<image>\nWhat is the emotion of this face?", "What emotion does this person show?", ""][i % 4]


def _raf(record: dict[str, Any], i: int) -> dict[str, Any]:
    label = record["labels"][0]
    return {**record, "dataset": "RAF-DB", "AUs": [], "labels": [label.capitalize() if i % 3 == 0 else label]}


def _disfa(record: dict[str, Any], i: int) -> dict[str, Any]:
    aus = [_MARKED.get(au, au) for au in record["AUs"]] or ["AU0"]
    return {**record, "dataset": "DISFA", "AUs": aus, "labels": []}


def _bp4d(record: dict[str, Any], i: int) -> dict[str, Any]:
    label = record["labels"][0]
    aus = (record["AUs"] or ["AU0"]) + (["AU33", "AU37"] if i % 3 == 1 else [])
    if aus != ["AU0"] and "AU0" in aus:
        aus.remove("AU0")
    return {**record, "dataset": "BP4D-gpt", "AUs": aus, "labels": [_OPEN_LABELS.get(label, label)]}


SOURCES = {"raf-db": _raf, "disfa": _disfa, "bp4d-gpt": _bp4d}


def build_fea20k_fixture(faces_dir: Path, out: Path, per_source: int = 8) -> Path:
    """Sources from the first 3 * per_source faces of a rendered set (`fea faces`); -> the manifest."""
    records = [json.loads(line) for line in (faces_dir / "samples.jsonl").read_text().splitlines()]
    if len(records) < 3 * per_source:
        raise ValueError(f"{faces_dir} holds {len(records)} faces, {3 * per_source} needed")
    manifest = {"sources": []}
    for s, (name, shape) in enumerate(SOURCES.items()):
        folder = out / name
        (folder / "images").mkdir(parents=True, exist_ok=True)
        lines = []
        for i, face in enumerate(records[s * per_source:(s + 1) * per_source]):
            record = shape(face, i)
            image = f"images/{i:04d}.png"
            shutil.copyfile(faces_dir / face["image"], folder / image)
            # ids restart in every source: "img_0000" exists three times
            record.update(id=f"img_{i:04d}", image=image, question=_question(i), meta_info=_METAS[i % len(_METAS)])
            lines.append(json.dumps(record, ensure_ascii=False))
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        manifest["sources"].append({"name": name, "jsonl": f"{name}/{name}.jsonl", "image_root": f"{name}"})
    path = out / "sources.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path
