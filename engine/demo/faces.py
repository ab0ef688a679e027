"""Synthetic labelled faces: expressions sampled per emotion (EMFACS prototypes with noise), faces
drawn by engine.demo.render, template reasoning from engine.demo.descriptions, and a writer for
FEA-20K style face sets (the embedded default data of the engine).
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.core.facs import NO_AU
from engine.demo.descriptions import describe
from engine.demo.render import HAIR_COLOURS, IRIS_COLOURS, RENDERED_AUS, SKIN_TONES, FaceStyle, render_face

DATASET = "SynthFaces"
QUESTION = "What is the emotion of this face?"
TEST_FRACTION = 0.2

# Emotion sampling noise: each prototype keeps its key AUs; others may drop out, and an extra AU may
# appear. Extras come from movements that do not turn the face into another emotion.
KEY_AUS: dict[str, tuple[str, ...]] = {
    "happiness": ("AU12",), "sadness": ("AU1", "AU15"), "surprise": ("AU2", "AU26"),
    "fear": ("AU4", "AU20"), "anger": ("AU4", "AU23"), "disgust": ("AU9",), "contempt": ("AU12", "AU14"),
    "neutral": (),
}
EXTRA_AUS = ("AU7", "AU10", "AU14", "AU17", "AU24", "AU25", "AU43")
NEUTRAL_EXTRAS = ("AU7", "AU17", "AU24", "AU25")
CONFLICTS = frozenset(frozenset(pair) for pair in (
    ("AU5", "AU43"), ("AU7", "AU43"), ("AU12", "AU15"), ("AU24", "AU25"), ("AU24", "AU26"),
    ("AU17", "AU26"), ("AU14", "AU20"), ("AU10", "AU12"),
))
P_DROP, P_EXTRA, P_NEUTRAL_EXTRA = 0.3, 0.25, 0.3


# ------------------------------------------------------------------------------------ sampling
def _emotions_and_prototypes() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    from engine.core.facs import EMOTIONS, PROTOTYPES

    return EMOTIONS, PROTOTYPES


def _au_sort_key(au: str) -> int:
    return int(au[2:])


def _conflicts(au: str, chosen: set[str]) -> bool:
    return any(frozenset((au, other)) in CONFLICTS for other in chosen)


def sample_expression(emotion: str, rng: np.random.Generator) -> dict[str, float]:
    """AU intensities for `emotion`: its prototype, possibly missing one non-key AU, possibly with
    one unrelated extra AU, each at a random intensity."""
    _, prototypes = _emotions_and_prototypes()
    if emotion not in prototypes:
        raise ValueError(f"unknown emotion {emotion!r}")
    if emotion == "neutral":
        if rng.random() < P_NEUTRAL_EXTRA:
            return {str(rng.choice(NEUTRAL_EXTRAS)): round(float(rng.uniform(0.35, 0.55)), 2)}
        return {}
    chosen = [au for au in prototypes[emotion] if au in RENDERED_AUS]
    droppable = [au for au in chosen if au not in KEY_AUS[emotion]]
    if droppable and rng.random() < P_DROP:
        chosen.remove(str(rng.choice(droppable)))
    aus = {au: round(float(rng.uniform(0.55, 1.0)), 2) for au in chosen}
    if rng.random() < P_EXTRA:
        pool = [au for au in EXTRA_AUS if au not in aus and not _conflicts(au, set(aus))]
        if pool:
            aus[str(rng.choice(pool))] = round(float(rng.uniform(0.4, 0.8)), 2)
    return dict(sorted(aus.items(), key=lambda kv: _au_sort_key(kv[0])))


def sample_style(emotion: str, rng: np.random.Generator) -> FaceStyle:
    """Who the face belongs to (shape, colours, hair) and the background. The face is aligned: upright,
    centred and of one size, as face crops are aligned before a recognition model sees them (real
    FEA data sets ship aligned crops). Unaligned faces are a choice of FaceStyle (offset, scale,
    tilt_deg), not of the sampler: the demo's ~1M-parameter vision tower cannot learn to see through
    pose variation within a CPU budget."""
    def jitter(rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]

    hue_base = [int(c) for c in rng.integers(90, 235, size=3)]
    return FaceStyle(
        face_width=round(float(rng.uniform(0.8, 0.98)), 3),
        face_height=round(float(rng.uniform(0.92, 1.08)), 3),
        skin=jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 10),
        hair=jitter(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], 12),
        iris=IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))],
        background=(hue_base[0], hue_base[1], hue_base[2]),
        long_hair=bool(rng.random() < 0.4),
        one_sided=("AU12", "AU14") if emotion == "contempt" else (),
        side=str(rng.choice(["left", "right"])),
    )


# ------------------------------------------------------------------------------------ face sets
def split_for(sample_id: str) -> str:
    """"test" for about TEST_FRACTION of ids, "train" otherwise; a function of the id alone."""
    digest = int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16)
    return "test" if digest % 1000 < TEST_FRACTION * 1000 else "train"


def make_record(index: int, seed: int, emotions: tuple[str, ...]) -> tuple[dict[str, Any], Image.Image]:
    """One FEA-20K record and its image. Each sample has its own random stream (seed, index), so a
    set of n faces is a prefix of a larger set with the same seed; emotions cycle through balanced
    blocks."""
    block = np.random.default_rng([seed, index // len(emotions), 1]).permutation(len(emotions))
    emotion = emotions[int(block[index % len(emotions)])]
    rng = np.random.default_rng([seed, index, 0])
    aus = sample_expression(emotion, rng)
    style = sample_style(emotion, rng)
    image = render_face(aus, style)
    sample_id = f"synth-s{seed}-{index:06d}"
    record = {
        "id": sample_id,
        "dataset": DATASET,
        "image": f"images/{sample_id}.png",
        "question": QUESTION,
        "AUs": list(aus) or [NO_AU],  # a face at rest says so explicitly: an empty list means "unknown"
        "labels": [emotion],
        "description": describe(emotion, aus, style, rng),
        "meta_info": {"intensities": aus, "style": style.to_dict(), "split": split_for(sample_id),
                      "emotion": emotion, "seed": seed, "renderer": "engine.demo.faces"},
        "is_valid": True,
    }
    return record, image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_face_set(out_dir: str | Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Render n labelled faces: OUT/samples.jsonl (FEA-20K records) and OUT/images/<id>.png.
    Same seed -> identical JSONL and PNG bytes. Returns a summary (counts per emotion and split)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    emotions, _ = _emotions_and_prototypes()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_emotion: Counter[str] = Counter()
    by_split: Counter[str] = Counter()
    jsonl = out / "samples.jsonl"
    with jsonl.open("w", encoding="utf-8") as lines:
        for index in range(n):
            record, image = make_record(index, seed, emotions)
            (out / record["image"]).write_bytes(png_bytes(image))
            lines.write(json.dumps(record, sort_keys=True) + "\n")
            by_emotion[record["labels"][0]] += 1
            by_split[record["meta_info"]["split"]] += 1
    return {"out": str(out), "samples_jsonl": str(jsonl), "n": n, "seed": seed, "dataset": DATASET,
            "by_emotion": dict(sorted(by_emotion.items())), "by_split": dict(sorted(by_split.items()))}
