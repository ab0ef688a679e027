"""The synthetic face world: AUs move the right parts of the face, sampling follows the EMFACS
prototypes with noise, descriptions pass the strict verifier, and face sets are valid FEA-20K and
reproducible to the byte."""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.core.config import VerifierConfig
from engine.demo.descriptions import describe
from engine.demo.faces import (
    DATASET,
    EXTRA_AUS,
    KEY_AUS,
    NEUTRAL_EXTRAS,
    sample_expression,
    sample_style,
    split_for,
    write_face_set,
)
from engine.demo.render import RENDERED_AUS, FaceStyle, region_box, render_face
from engine.core.facs import AU_DESCRIPTIONS, EMOTIONS, NO_AU, PROTOTYPES
from engine.core.verifier import parse_completion, verify

FEA20K_KEYS = {"id", "dataset", "image", "question", "AUs", "labels", "description", "meta_info", "is_valid"}


def _pixels(aus: dict[str, float], style: FaceStyle | None = None) -> np.ndarray:
    return np.asarray(render_face(aus, style), dtype=np.int16)


def _change(before: np.ndarray, after: np.ndarray, region: str) -> float:
    """Mean absolute pixel change inside a facial region of the default (untilted) face."""
    x0, y0, x1, y1 = region_box(region)
    return float(np.abs(after[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean())


NEUTRAL = _pixels({})
MOVED = 2.0  # mean |delta| per channel above which a region clearly changed
STILL = 0.05  # ... and below which it did not (anti-aliasing may touch a boundary pixel)

# AU -> (region that must change, regions that must stay as they are)
WHERE = {
    "AU1": ("brows", ("mouth", "chin")),
    "AU2": ("brows", ("mouth", "chin", "nose")),
    "AU4": ("brows", ("mouth", "chin", "nose")),
    "AU5": ("eyes", ("mouth", "chin", "nose")),
    "AU6": ("eyes", ("mouth", "chin", "brows")),
    "AU7": ("eyes", ("mouth", "chin", "brows")),
    "AU43": ("eyes", ("mouth", "chin", "brows")),
    "AU9": ("nose", ("chin", "brows")),
    "AU10": ("mouth", ("brows", "eyes")),
    "AU12": ("mouth", ("brows", "eyes")),
    "AU14": ("mouth", ("brows", "eyes", "nose")),
    "AU15": ("mouth", ("brows", "eyes", "nose")),
    "AU17": ("chin", ("brows", "eyes", "nose")),
    "AU20": ("mouth", ("brows", "eyes", "nose")),
    "AU23": ("mouth", ("brows", "eyes", "nose")),
    "AU24": ("mouth", ("brows", "eyes", "nose")),
    "AU25": ("mouth", ("brows", "eyes", "nose")),
    "AU26": ("mouth", ("brows", "eyes", "nose")),
}


def test_the_neutral_face_is_a_plain_rgb_image_of_the_requested_size():
    image = render_face({})
    assert image.mode == "RGB" and image.size == (112, 112)
    assert render_face({}, size=64).size == (64, 64)
    assert render_face({"AU12": 0.0}).tobytes() == image.tobytes()  # intensity 0 is no movement


@pytest.mark.parametrize("au", sorted(WHERE, key=lambda au: int(au[2:])))
def test_each_au_changes_its_own_region_only(au):
    moved, still = WHERE[au]
    after = _pixels({au: 1.0})
    assert _change(NEUTRAL, after, moved) > MOVED, f"{au} should visibly change the {moved}"
    for region in still:
        assert _change(NEUTRAL, after, region) < STILL, f"{au} should leave the {region} alone"


@pytest.mark.parametrize("au", RENDERED_AUS)
def test_every_drawable_au_is_visible_and_grows_with_intensity(au):
    def clearly_changed(aus: dict[str, float]) -> int:
        return int((np.abs(_pixels(aus) - NEUTRAL).max(axis=2) > 40).sum())

    weak, strong = clearly_changed({au: 0.4}), clearly_changed({au: 1.0})
    assert strong >= 15, f"{au} at full intensity changes only {strong} pixels clearly"
    assert strong > weak
    assert np.abs(_pixels({au: 0.4}) - NEUTRAL).sum() > 0


def test_smile_and_frown_move_the_mouth_corners_in_opposite_directions():
    """The lips' dark pixels sit higher at the corners than at the centre in a smile, lower in a frown."""
    x0, y0, x1, y1 = region_box("mouth")

    def corner_minus_centre(aus: dict[str, float]) -> float:
        red = np.asarray(render_face(aus), dtype=np.int16)[y0:y1, x0:x1]
        lips = (red[..., 0] - red[..., 1] > 60)  # lips are much redder than skin
        rows = np.arange(lips.shape[0])[:, None].repeat(lips.shape[1], axis=1)
        width = lips.shape[1]
        def mean_row(cols: slice) -> float:
            mask = lips[:, cols]
            return float(rows[:, cols][mask].mean())
        corners = (mean_row(slice(0, width // 3)) + mean_row(slice(2 * width // 3, width))) / 2
        return corners - mean_row(slice(width // 3, 2 * width // 3))

    assert corner_minus_centre({"AU12": 1.0}) < -1.0  # corners above the centre (y grows downwards)
    assert corner_minus_centre({"AU15": 1.0}) > 1.0
    assert abs(corner_minus_centre({})) < 1.0


def test_contempt_acts_on_one_side_of_the_mouth():
    for side in ("left", "right"):
        style = FaceStyle(one_sided=("AU12", "AU14"), side=side)
        after = _pixels({"AU12": 1.0, "AU14": 1.0}, style)
        x0, y0, x1, y1 = region_box("mouth")
        mid = (x0 + x1) // 2
        delta = np.abs(after - NEUTRAL)[y0:y1]
        left, right = float(delta[:, x0:mid].mean()), float(delta[:, mid:x1].mean())
        active, quiet = (left, right) if side == "left" else (right, left)
        assert active > 2 * quiet, (side, left, right)  # the lips share one outline, which moves a little on both sides


def test_bad_expressions_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="AU29"):
        render_face({"AU29": 0.5})
    with pytest.raises(ValueError, match="AU99"):
        render_face({"AU99": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render_face({"AU12": 1.5})
    with pytest.raises(ValueError, match="side"):
        FaceStyle(side="up")
    with pytest.raises(ValueError, match="nose_size"):
        FaceStyle.from_dict({"nose_size": 2})
    with pytest.raises(ValueError, match="emotion"):
        sample_expression("boredom", np.random.default_rng(0))


def test_style_round_trips_through_json_and_drives_the_image():
    style = sample_style("contempt", np.random.default_rng(3))
    again = FaceStyle.from_dict(json.loads(json.dumps(style.to_dict())))
    assert again == style
    assert render_face({"AU12": 0.8}, style.to_dict()).tobytes() == render_face({"AU12": 0.8}, style).tobytes()
    assert render_face({}, style).tobytes() != render_face({}).tobytes()


def test_sampled_expressions_follow_the_prototypes_with_bounded_noise():
    dropped: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    for i in range(800):
        emotion = EMOTIONS[i % len(EMOTIONS)]
        aus = sample_expression(emotion, np.random.default_rng([7, i]))
        assert list(aus) == sorted(aus, key=lambda au: int(au[2:]))
        assert all(au in RENDERED_AUS for au in aus)
        if emotion == "neutral":
            assert len(aus) <= 1 and set(aus) <= set(NEUTRAL_EXTRAS)
            assert all(value <= 0.55 for value in aus.values())  # faint
            extra[emotion] += len(aus)
            continue
        prototype = set(PROTOTYPES[emotion])
        assert set(KEY_AUS[emotion]) <= set(aus), (emotion, aus)
        missing, added = prototype - set(aus), set(aus) - prototype
        assert len(missing) <= 1 and len(added) <= 1, (emotion, aus)
        assert added <= set(EXTRA_AUS)
        assert all(0.4 <= value <= 1.0 for value in aus.values())
        dropped[emotion] += len(missing)
        extra[emotion] += len(added)
    # noise actually happens, for every emotion that has something to drop / room for an extra
    assert all(dropped[e] > 5 for e in EMOTIONS if len(PROTOTYPES[e]) > len(KEY_AUS[e]))
    assert all(extra[e] > 5 for e in EMOTIONS)


def _accepted(description: str, aus: list[str], emotion: str) -> None:
    for policy in ("strict", "paper"):
        verdict = verify(description, aus, [emotion], VerifierConfig(policy=policy))
        assert verdict.accepted, (policy, verdict.reasons, description)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), emotion=st.sampled_from(EMOTIONS))
def test_descriptions_mention_exactly_the_labelled_aus_and_pass_the_strict_verifier(seed, emotion):
    rng = np.random.default_rng(seed)
    aus = sample_expression(emotion, rng)
    style = sample_style(emotion, rng)
    description = describe(emotion, aus, style, rng)
    parsed = parse_completion(description)
    assert set(parsed.all_aus) == set(parsed.think_aus) == set(aus)
    assert parsed.answer == emotion
    for au in aus:
        assert f"({au})" in parsed.think  # each AU is named beside the movement it describes
    _accepted(description, list(aus), emotion)


def test_descriptions_vary_and_reason_towards_the_emotion():
    rng = np.random.default_rng(0)
    texts = {describe("happiness", {"AU6": 0.7, "AU12": 0.9}, FaceStyle(), rng) for _ in range(60)}
    assert len(texts) >= 6  # several templates and phrasings
    assert all("happiness" in text.split("</think>")[0] for text in texts)
    one_sided = describe("contempt", {"AU12": 0.9, "AU14": 0.7}, FaceStyle(one_sided=("AU12", "AU14"), side="left"), rng)
    assert "left of the image" in one_sided


def test_split_is_a_deterministic_function_of_the_id():
    ids = [f"synth-s0-{i:06d}" for i in range(2000)]
    splits = [split_for(i) for i in ids]
    assert splits == [split_for(i) for i in ids]
    assert set(splits) == {"train", "test"}
    assert 0.16 < splits.count("test") / len(ids) < 0.24


@pytest.fixture(scope="module")
def face_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("faces")
    return out, write_face_set(out, n=24, seed=0)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_face_set_is_valid_fea20k(face_set):
    folder, summary = face_set
    records = _records(folder)
    assert len(records) == summary["n"] == 24
    assert len({r["id"] for r in records}) == 24
    for record in records:
        assert set(record) == FEA20K_KEYS
        assert record["dataset"] == DATASET and record["is_valid"] is True
        assert record["image"] == f"images/{record['id']}.png"
        with Image.open(io.BytesIO((folder / record["image"]).read_bytes())) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (112, 112)
        assert record["labels"][0] in EMOTIONS and len(record["labels"]) == 1
        meta = record["meta_info"]
        if meta["intensities"]:
            assert all(au in AU_DESCRIPTIONS for au in record["AUs"])
            assert set(meta["intensities"]) == set(record["AUs"])
        else:  # a face at rest says so explicitly: an empty AU list would mean "unknown"
            assert record["AUs"] == [NO_AU]
        assert meta["split"] == split_for(record["id"])
        assert FaceStyle.from_dict(meta["style"]).to_dict() == meta["style"]
        _accepted(record["description"], record["AUs"], record["labels"][0])
    # balanced blocks of the eight emotions; counts add up
    assert summary["by_emotion"] == dict.fromkeys(sorted(EMOTIONS), 3)
    assert sum(summary["by_split"].values()) == 24


def test_face_set_images_show_what_the_record_says(face_set):
    folder, _ = face_set
    for record in _records(folder)[:8]:
        meta = record["meta_info"]
        expected = render_face(meta["intensities"], meta["style"])
        with Image.open(folder / record["image"]) as image:
            assert image.tobytes() == expected.tobytes()


def test_face_set_varies_in_look_and_is_aligned(face_set):
    folder, _ = face_set
    styles = [r["meta_info"]["style"] for r in _records(folder)]
    for key in ("skin", "background", "face_width", "face_height"):
        assert len({json.dumps(s[key]) for s in styles}) >= 10, key
    assert all(s["tilt_deg"] == 0 and s["scale"] == 1 and s["offset"] == [0, 0] for s in styles)


def test_face_set_is_reproducible_to_the_byte_and_seed_dependent(face_set, tmp_path):
    folder, _ = face_set
    write_face_set(tmp_path / "again", n=24, seed=0)
    write_face_set(tmp_path / "prefix", n=10, seed=0)
    write_face_set(tmp_path / "other", n=24, seed=1)
    assert (tmp_path / "again/samples.jsonl").read_bytes() == (folder / "samples.jsonl").read_bytes()
    for png in sorted((folder / "images").iterdir()):
        assert (tmp_path / "again/images" / png.name).read_bytes() == png.read_bytes()
    # a smaller set with the same seed is a prefix of the larger one
    prefix_lines = (tmp_path / "prefix/samples.jsonl").read_text().splitlines()
    assert prefix_lines == (folder / "samples.jsonl").read_text().splitlines()[:10]
    other = _records(tmp_path / "other")
    assert {r["id"] for r in other}.isdisjoint({r["id"] for r in _records(folder)})
    assert [r["meta_info"]["style"] for r in other] != [r["meta_info"]["style"] for r in _records(folder)]


def test_face_set_imports_cleanly_through_the_data_layer(face_set):
    from engine.data.dataset import load_input
    from engine.core.types import Sample

    folder, _ = face_set
    loaded = list(load_input(str(folder / "samples.jsonl"), image_root=str(folder)))
    assert len(loaded) == 24 and all(isinstance(item, Sample) for item in loaded), loaded
    by_id = {r["id"]: r for r in _records(folder)}
    for sample in loaded:
        assert list(sample.aus) == by_id[sample.id]["AUs"]
        assert list(sample.labels) == by_id[sample.id]["labels"]


def test_write_face_set_refuses_an_empty_set(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        write_face_set(tmp_path, n=0)
