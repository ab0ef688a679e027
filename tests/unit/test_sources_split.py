"""`fea import --manifest` over the FEA-20K-shaped multi-source fixture, and `fea split`."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from engine.cli.main import main
from engine.data import dataset
from engine.data.sources import import_manifest, load_manifest
from engine.data.split import assign, split_dataset
from tests.support.fea20k import build_fea20k_fixture


@pytest.fixture(scope="module")
def manifest(faces, tmp_path_factory) -> Path:
    return build_fea20k_fixture(faces, tmp_path_factory.mktemp("fea20k"), per_source=8)


@pytest.fixture(scope="module")
def imported(manifest, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("canonical") / "all"
    return out, import_manifest(manifest, str(out), rows_per_part=10)


def test_nothing_the_official_code_accepts_is_quarantined(imported):
    out, summary = imported
    assert (summary["read"], summary["imported"], summary["quarantined"]) == (24, 24, 0)
    assert summary["by_source"] == {name: {"read": 8, "imported": 8, "quarantined": 0, "by_reason": {}}
                                    for name in ("raf-db", "disfa", "bp4d-gpt")}
    assert summary["by_note"]["question_default"] == 12  # question null or empty (half of each source)


def test_colliding_ids_are_renamed_per_source_and_mapped(imported):
    out, summary = imported
    assert summary["renamed_ids"] == 24  # img_0000..img_0007 exist in all three sources
    id_map = pl.read_parquet(out / "id_map.parquet")
    assert id_map.filter(pl.col("source") == "disfa")["id"].to_list()[0] == "disfa/img_0000"
    rows = {r["id"]: r for r in pl.read_parquet(out / "samples" / "*.parquet").iter_rows(named=True)}
    assert len(rows) == 24 and "id_renamed:img_0003" in rows["raf-db/img_0003"]["notes"]


def test_unknown_lists_forms_and_open_labels_survive_import(imported):
    out, _ = imported
    samples = {s.id: s for s in dataset.iter_samples(str(out))}
    raf = [s for s in samples.values() if s.dataset == "RAF-DB"]
    assert all(s.aus == () and len(s.labels) == 1 for s in raf)  # emotion-only: AUs unknown
    assert all(s.labels[0] == s.labels[0].lower() for s in raf)  # "Happiness" normalised
    disfa = [s for s in samples.values() if s.dataset == "DISFA"]
    assert all(s.labels == () and s.aus for s in disfa)  # AU-only: labels unknown
    assert all(not any(n.startswith("au_invalid") for n in s.notes) for s in disfa)  # R12A, L14B, "AU 4" normalised
    bp4d = [s for s in samples.values() if s.dataset == "BP4D-gpt"]
    assert any({"AU33", "AU37"} <= set(s.aus) for s in bp4d)
    assert {"bittersweet", "confusion", "determination"} & {s.labels[0] for s in bp4d}
    assert set(bp4d[0].label_set) >= {s.labels[0] for s in bp4d}  # the source's own label set
    assert all("<image>" not in s.question and s.question for s in samples.values())


def test_manifest_errors_name_the_rule(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - name: a\n    jsonl: a.jsonl\n")
    with pytest.raises(ValueError, match="image_root"):
        load_manifest(bad)


def test_assign_is_deterministic_stratified_and_seeds_only_reasoned_records():
    records = [(f"id{i}", ("A" if i < 60 else "B", "x"), i % 4 != 0) for i in range(100)]
    first = assign(records, seed_size=10, seed_fraction=None, test_fraction=0.2, seed=7)
    assert first == assign(list(reversed(records)), seed_size=10, seed_fraction=None, test_fraction=0.2, seed=7)
    assert first != assign(records, seed_size=10, seed_fraction=None, test_fraction=0.2, seed=8)
    by_split = {name: [i for i, s in first.items() if s == name] for name in ("seed", "pool", "test")}
    assert len(by_split["test"]) == 20 and len(by_split["seed"]) == 10 and len(by_split["pool"]) == 70
    assert sum(int(i[2:]) < 60 for i in by_split["seed"]) == 6  # seed spread 60:40 over the strata
    assert all(int(i[2:]) % 4 != 0 for i in by_split["seed"])  # only records with reasoning


def test_fea_split_writes_seed_pool_test(imported, tmp_path, capsys):
    out, _ = imported
    target = tmp_path / "splits"
    assert main(["split", "--input", str(out), "--out", str(target), "--seed-size", "6", "--test-fraction", "0.25",
                 "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((target / "split.json").read_text())
    counts = {name: report["splits"][name]["n"] for name in ("seed", "pool", "test")}
    assert sum(counts.values()) == 24 and counts["seed"] == 6
    pool = list(dataset.iter_samples(str(target / "pool")))
    assert pool and all(s.description == "" for s in pool)  # the pool keeps labels and AUs, no reasoning
    assert any(s.aus for s in pool) and any(s.labels for s in pool)
    seed = list(dataset.iter_samples(str(target / "seed")))
    assert all(s.description.startswith("<think>") for s in seed)
    assert sum(report["splits"]["test"]["by_source"].values()) == counts["test"]
    again = split_dataset(str(out), str(tmp_path / "again"), seed_size=6, test_fraction=0.25, seed=3)
    assert again["splits"] == {k: {**v, "uri": report["splits"][k]["uri"].replace("splits", "again")}
                               for k, v in report["splits"].items()}


def test_fea_import_manifest_through_the_cli(manifest, tmp_path, capsys):
    assert main(["import", "--manifest", str(manifest), "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == 24
    assert main(["import", "--manifest", str(manifest), "--jsonl", "x.jsonl", "--out", str(tmp_path / "p")]) != 0
