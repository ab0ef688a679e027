"""`fea import`: every kind of unusable record is quarantined with its reason, the rest imported."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from engine.data import dataset, shards
from engine.core.types import QuarantineRecord, Sample


def png_face(seed: int, size: int = 48) -> bytes:
    """A small synthetic face (oval, eyes, mouth) so the images differ from each other."""
    from PIL import ImageDraw

    im = Image.new("RGB", (size, size), (40 + seed * 20 % 200, 90, 140))
    draw = ImageDraw.Draw(im)
    draw.ellipse((8, 4, size - 8, size - 4), fill=(224, 180, 150))
    draw.ellipse((16, 16, 20, 20), fill=(0, 0, 0))
    draw.ellipse((size - 20, 16, size - 16, 20), fill=(0, 0, 0))
    draw.arc((16, 26 + seed % 4, size - 16, 38), 0, 180, fill=(120, 0, 0), width=2)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def record(i: int, **overrides) -> dict:
    base = {"id": f"raf/train_{i:04d}.jpg", "dataset": "RAF-DB", "image": f"faces/{i:04d}.png",
            "question": "What is the emotion of this face?", "AUs": ["AU6", "AU12"], "labels": ["happiness"],
            "description": "<think>AU6 and AU12 are active.</think><answer>happiness</answer>",
            "meta_info": {"split": "train", "intensity": {"AU12": 3}}, "is_valid": True}
    base.update(overrides)
    return base


@pytest.fixture()
def fea_input(tmp_path: Path):
    """A JSONL file mixing good records with one of every kind of bad record, plus its image root."""
    root = tmp_path / "images"
    (root / "faces").mkdir(parents=True)
    for i in range(12):
        (root / "faces" / f"{i:04d}.png").write_bytes(png_face(i))
    (root / "faces" / "garbage.png").write_bytes(b"this is not an image")
    (root / "faces" / "truncated.png").write_bytes(png_face(99)[:-40])  # verify() alone may miss this
    (tmp_path / "secret.txt").write_text("outside the root")
    good = [
        record(0),
        record(1, AUs=["AU04", "au 1", "AU15B"], labels=["Sad"]),  # normalised ids and adjective
        record(2, dataset="DISFA", labels=[], AUs=["L12", "AU25"], description=None, meta_info=None),
        record(3, dataset="MyOwnSet", labels=["surprised"], AUs=["AU1", "AU2", "AU5", "AU26"]),
        record(4, id="id.with.dots/and/slashes ü", labels=["angry"], AUs=["AU4", "AU5", "AU7", "AU23"]),
        # what the official code accepts is imported: open labels, any FACS id, a non-FACS token is a note
        record(10, labels=["Bored"]),
        record(11, labels=["contempt"]),  # outside RAF-DB's 7, kept
        record(12, image="faces/0005.png", AUs=["AU6", "AU99", "R12A", "AU33"]),
        record(13, image="faces/0006.png", AUs=["smile"], question=None),
        record(18, image="faces/0009.png", question="<image>\nHow does this person feel?", AUs=None, labels=None),
    ]
    bad = [
        ("bad_json", '{"id": "broken", "dataset": '),
        ("not_object", json.dumps([1, 2, 3])),
        ("missing_field:image", json.dumps({k: v for k, v in record(5).items() if k != "image"})),
        ("is_valid_false", json.dumps(record(6, is_valid=False))),
        ("image_missing", json.dumps(record(7, image="faces/absent.png"))),
        ("image_undecodable", json.dumps(record(8, image="faces/garbage.png"))),
        ("image_undecodable", json.dumps(record(9, image="faces/truncated.png"))),
        ("duplicate_id", json.dumps(record(0, image="faces/0007.png"))),
        ("image_outside_root", json.dumps(record(14, image="../secret.txt"))),
        ("image_outside_root", json.dumps(record(15, image="../../../../etc/passwd"))),
        ("image_outside_root", json.dumps(record(16, image="/etc/passwd"))),
        ("bad_field:AUs", json.dumps(record(17, image="faces/0008.png", AUs="AU6"))),
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in good] + [text for _, text in bad]
    jsonl = tmp_path / "fea.jsonl"
    jsonl.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")
    return jsonl, root, good, bad


def test_import_quarantines_every_bad_kind_and_accounts_for_all(fea_input, tmp_path):
    jsonl, root, good, bad = fea_input
    out = tmp_path / "canonical"
    summary = dataset.import_fea20k(str(jsonl), str(root), str(out), rows_per_part=2)

    assert summary["read"] == len(good) + len(bad) == summary["imported"] + summary["quarantined"]
    assert summary["imported"] == len(good) and summary["quarantined"] == len(bad)
    expected_reasons: dict[str, int] = {}
    for reason, _ in bad:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert summary["by_reason"] == expected_reasons
    assert json.loads((out / "summary.json").read_text()) == summary
    assert [p["path"] for p in summary["parts"]] == [f"samples/part-{i:05d}.parquet" for i in range(5)]
    assert summary["by_note"] == {"au_invalid": 2, "question_default": 1}

    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert sorted(dataset.reason_code(r) for r in quarantine["reason"]) == sorted(r for r, _ in bad)
    dup = quarantine.filter(pl.col("reason") == "duplicate_id")
    assert dup["sample_id"].to_list() == ["raf/train_0000.jpg"]
    assert dup["line"].to_list() == [len(good) + 8 + 1]  # 1-based, counting the blank line
    assert set(quarantine["source"]) == {str(jsonl)}
    assert quarantine.filter(pl.col("reason").str.starts_with("bad_json"))["raw"].to_list() == [bad[0][1]]


def test_imported_parquet_reads_back_with_polars_and_datasets(fea_input, tmp_path):
    jsonl, root, good, _ = fea_input
    out = tmp_path / "canonical"
    dataset.import_fea20k(str(jsonl), str(root), str(out), rows_per_part=2)

    frame = pl.read_parquet(out / "samples" / "*.parquet")
    assert frame["id"].to_list() == [r["id"] for r in good]
    for row, rec in zip(frame.iter_rows(named=True), good):
        original = (root / rec["image"]).read_bytes()
        assert row["image"] == original
        assert row["image_sha256"] == hashlib.sha256(original).hexdigest()
        assert row["image_path"] == rec["image"]
        assert json.loads(row["meta"]) == (rec["meta_info"] or {})
    by_id = {row["id"]: row for row in frame.iter_rows(named=True)}
    assert by_id["raf/train_0001.jpg"]["aus"] == ["AU1", "AU4", "AU15"]
    assert by_id["raf/train_0001.jpg"]["labels"] == ["sadness"]
    assert by_id["raf/train_0002.jpg"]["labels"] == [] and by_id["raf/train_0002.jpg"]["description"] == ""
    assert by_id["raf/train_0003.jpg"]["labels"] == ["surprise"]
    assert by_id["raf/train_0010.jpg"]["labels"] == ["bored"] and by_id["raf/train_0011.jpg"]["labels"] == ["contempt"]
    assert by_id["raf/train_0012.jpg"]["aus"] == ["AU6", "AU12", "AU33"]
    assert by_id["raf/train_0012.jpg"]["notes"] == ["au_invalid:AU99"]
    smile = by_id["raf/train_0013.jpg"]  # nothing valid left: the AUs are unknown
    assert smile["aus"] == [] and smile["notes"] == ["question_default", "au_invalid:smile"]
    assert smile["question"] == "What is the emotion of this face?"
    # each source's own answer labels: RAF-DB's listed seven plus the open labels its records use
    assert by_id["raf/train_0000.jpg"]["label_set"] == sorted(
        ["anger", "bored", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"])
    assert by_id["raf/train_0002.jpg"]["label_set"] == []  # DISFA: AU-only, no labels
    stripped = by_id["raf/train_0018.jpg"]
    assert stripped["question"] == "How does this person feel?" and stripped["aus"] == stripped["labels"] == []

    import datasets

    hf = datasets.load_dataset("parquet", data_files=str(out / "samples" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert hf.num_rows == len(good)
    assert sorted(hf["id"]) == sorted(r["id"] for r in good)
    first = hf[0]
    assert Image.open(io.BytesIO(first["image"])).size == (48, 48)
    assert hashlib.sha256(first["image"]).hexdigest() == first["image_sha256"]


def test_load_input_and_iter_samples_agree_across_forms(fea_input, tmp_path):
    jsonl, root, good, bad = fea_input
    out = tmp_path / "canonical"
    dataset.import_fea20k(str(jsonl), str(root), str(out))

    from_jsonl = list(dataset.load_input(str(jsonl), image_root=str(root)))
    assert len(from_jsonl) == len(good) + len(bad)
    samples = [s for s in from_jsonl if isinstance(s, Sample)]
    assert all(isinstance(q, QuarantineRecord) for q in from_jsonl if not isinstance(q, Sample))

    canonical = list(dataset.iter_samples(str(out)))
    assert canonical == samples  # the stored form reads back to exactly the same Samples
    assert dataset.input_kind(str(out)) == "canonical" and dataset.input_kind(str(jsonl)) == "jsonl"
    # JSONL without an explicit root: images resolve against the file's folder, where they are not.
    from_default_root = list(dataset.load_input(str(jsonl)))
    assert not any(isinstance(s, Sample) for s in from_default_root)


def test_stored_rows_are_rechecked_on_load(tmp_path):
    """A damaged canonical shard (image bytes not matching their hash) is quarantined, not trusted."""
    good = png_face(1)
    sample = Sample(id="a", dataset="RAF-DB", image=good, image_sha256=hashlib.sha256(good).hexdigest(),
                    image_path="a.png", question="q", aus=("AU6",), labels=("happiness",))
    tampered = shards.sample_to_row(sample) | {"id": "b", "image": png_face(2)}
    shards.write_parquet(str(tmp_path / "samples" / "part-00000.parquet"),
                         [shards.sample_to_row(sample), tampered], shards.SAMPLE_SCHEMA)
    items = list(dataset.load_input(str(tmp_path)))
    assert items[0] == sample
    assert isinstance(items[1], QuarantineRecord) and items[1].reason == "image_sha256_mismatch"
    # the record names the row as stored, without its image bytes
    raw = json.loads(items[1].raw)
    assert raw["id"] == "b" and raw["image_sha256"] == sample.image_sha256 and "image" not in raw


def test_an_id_repeated_in_a_later_part_is_a_duplicate(tmp_path):
    """One id space over all parts of a dataset: the trainer and synthesis never see an id twice."""
    good = png_face(1)
    sample = Sample(id="a", dataset="RAF-DB", image=good, image_sha256=hashlib.sha256(good).hexdigest(),
                    image_path="a.png", question="q", aus=("AU6",), labels=("happiness",))
    for part in ("part-00000", "part-00001"):
        shards.write_parquet(str(tmp_path / "samples" / f"{part}.parquet"), [shards.sample_to_row(sample)],
                             shards.SAMPLE_SCHEMA)
    items = list(dataset.load_input(str(tmp_path)))
    assert items[0] == sample
    assert isinstance(items[1], QuarantineRecord) and items[1].reason == "duplicate_id"
    assert [s.id for s in dataset.iter_samples(str(tmp_path))] == ["a"]


def test_empty_input_still_writes_a_readable_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    summary = dataset.import_fea20k(str(tmp_path / "empty.jsonl"), str(tmp_path), str(tmp_path / "out"))
    assert (summary["read"], summary["imported"], summary["quarantined"]) == (0, 0, 0)
    assert pl.read_parquet(tmp_path / "out" / "samples" / "part-00000.parquet").height == 0
    assert list(dataset.iter_samples(str(tmp_path / "out"))) == []


def test_synthetic_face_set_imports_without_quarantine(faces, tmp_path):
    """The embedded face world's JSONL is valid FEA-20K: every record imports."""
    summary = dataset.import_fea20k(str(faces / "samples.jsonl"), str(faces), str(tmp_path / "out"))
    assert summary["read"] == summary["imported"] > 0 and summary["quarantined"] == 0, summary["by_reason"]
    samples = list(dataset.iter_samples(str(tmp_path / "out")))
    assert len(samples) == summary["imported"] and all(s.dataset == "SynthFaces" for s in samples)


def test_stored_images_get_a_header_check_and_jsonl_images_a_full_decode(tmp_path):
    """Canonical rows whose bytes match their stored sha256 were fully decoded at import, so only
    their header is read again; garbage is still quarantined there, and a single Parquet file from
    elsewhere, like JSONL, gets the full decode that catches a truncated image."""
    truncated = png_face(3)[:-40]  # a valid header, pixel data cut short
    rows = []
    for name, image in (("good", png_face(1)), ("garbage", b"not an image at all"), ("truncated", truncated)):
        sample = Sample(id=name, dataset="RAF-DB", image=image, image_sha256=hashlib.sha256(image).hexdigest(),
                        image_path=f"{name}.png", question="q", aus=("AU6",), labels=("happiness",))
        rows.append(shards.sample_to_row(sample))
    shards.write_parquet(str(tmp_path / "canonical" / "samples" / "part-00000.parquet"), rows, shards.SAMPLE_SCHEMA)
    shards.write_parquet(str(tmp_path / "single.parquet"), rows, shards.SAMPLE_SCHEMA)

    def outcome(items):
        return {item.id if isinstance(item, Sample) else item.sample_id:
                "ok" if isinstance(item, Sample) else dataset.reason_code(item.reason) for item in items}

    assert outcome(dataset.load_input(str(tmp_path / "canonical"))) == {
        "good": "ok", "garbage": "image_undecodable", "truncated": "ok"}
    assert outcome(dataset.load_input(str(tmp_path / "single.parquet"))) == {
        "good": "ok", "garbage": "image_undecodable", "truncated": "image_undecodable"}
    with pytest.raises(dataset.InvalidRecord, match="image_undecodable"):
        dataset.check_image(truncated)
    dataset.check_image_header(truncated)  # the header alone is fine
