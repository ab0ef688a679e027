"""The FEA-20K-shaped multi-source fixture through the whole pipeline: import (manifest) -> split ->
synth (replay, then hf with the tiny model) -> train (SFT on the seed) -> eval, with nothing that
the official code accepts quarantined along the way."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.core.config import SynthConfig
from engine.data.commits import committed_shard_uris
from engine.data import dataset, shards
from engine.data.sources import import_manifest
from engine.data.split import split_dataset
from engine.synth.job import run_synth
from tests.support.fea20k import build_fea20k_fixture
from trainer.eval import eval_config, run_eval
from trainer.run import train, training_config


@pytest.fixture(scope="module")
def prepared(faces, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fea20k-pipeline")
    manifest = build_fea20k_fixture(faces, root / "sources", per_source=8)
    summary = import_manifest(manifest, str(root / "all"), rows_per_part=10)
    assert summary["quarantined"] == 0
    split_dataset(str(root / "all"), str(root / "split"), seed_size=6, test_fraction=0.25, seed=1)
    # the reference reasoning of every record, by its imported id: the replay backend serves it
    references = {s.id: s.description for s in dataset.iter_samples(str(root / "all"))}
    replay = root / "replay.jsonl"
    replay.write_text("".join(json.dumps({"sample_id": sid, "attempt": 0, "completion": text}) + "\n"
                              for sid, text in references.items()))
    return {"root": root, "split": root / "split", "replay": replay}


def _synth(pool: Path, out: Path, **fields) -> dict:
    return run_synth(SynthConfig.model_validate({"input": str(pool), "out": str(out), "progress": "off",
                                                 "partition_size": 5, **fields}))


def _accounted(out: Path, pool_ids: set[str]) -> dict[str, list[str]]:
    kinds = {kind: [r.get("id") or r.get("sample_id") for uri in committed_shard_uris(str(out), kind, "parquet")
                    for r in shards.iter_parquet_rows(uri)] for kind in ("accepted", "rejected", "quarantine")}
    assert kinds["quarantine"] == []  # nothing the official code accepts is quarantined
    assert sorted(kinds["accepted"] + kinds["rejected"]) == sorted(pool_ids)
    return kinds


def test_replay_synthesis_over_the_pool(ray_local, prepared):
    pool = prepared["split"] / "pool"
    samples = {s.id: s for s in dataset.iter_samples(str(pool))}
    for policy in ("strict", "paper"):
        out = prepared["root"] / f"synth-replay-{policy}"
        _synth(pool, out, max_retries=0, verifier={"policy": policy},
               generation={"backend": "replay", "replay_path": str(prepared["replay"]), "batch_size": 4})
        kinds = _accounted(out, set(samples))
        accepted = {samples[i].dataset for i in kinds["accepted"]}
        # emotion-only records: AUs unknown, never checked; AU-only records: the answer is never checked
        assert {"RAF-DB", "DISFA"} <= accepted, (policy, kinds)


def test_hf_synthesis_over_the_pool_with_the_official_wording(ray_local, tiny_model, prepared):
    pool = prepared["split"] / "pool"
    out = prepared["root"] / "synth-hf"
    summary = _synth(pool, out, model={"path": str(tiny_model)}, max_retries=1, prompt_style="facial-r1",
                     verifier={"policy": "paper"}, generation={"backend": "hf", "max_new_tokens": 12, "batch_size": 4})
    _accounted(out, {s.id for s in dataset.iter_samples(str(pool))})
    assert summary["quarantined"] == 0


def test_train_on_the_seed_and_evaluate_on_the_test_split(prepared, tiny_model, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"sft": {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "max_steps": 2, "per_device_train_batch_size": 2, "precision": "fp32", "shuffle_buffer": 0,
        "save_steps": 2, "logging_steps": 1, "report_to": ["none"], "prompt_style": "facial-r1"}}))
    summary = train("sft", training_config("sft", data=[str(prepared["split"] / "seed")], model=str(tiny_model),
                                           out=str(tmp_path / "sft"), config_path=str(config)))
    assert summary["global_step"] == 2 and summary["data"]["rows"] == 6

    test = prepared["split"] / "test"
    eval_yaml = tmp_path / "eval.yaml"
    eval_yaml.write_text(yaml.safe_dump({"eval": {"generation": {"backend": "replay",
                                                                 "replay_path": str(prepared["replay"])}}}))
    metrics = run_eval(eval_config(data=str(test), out=str(tmp_path / "eval"), config_path=str(eval_yaml)))
    samples = list(dataset.iter_samples(str(test)))
    with_labels = sum(bool(s.labels) for s in samples)
    with_aus = sum(bool(s.aus) for s in samples)
    for view in (metrics["overall"], metrics["official"]):
        assert view["emotion_n"] == with_labels and view["au_n"] == with_aus
    assert metrics["n"] == len(samples)


@pytest.mark.s3
def test_import_a_manifest_stored_in_s3(s3, prepared):
    import uuid

    from engine.data import storage

    prefix = f"s3://fea-test/fea20k-{uuid.uuid4().hex[:10]}"
    sources = prepared["root"] / "sources"
    for path in sorted(p for p in sources.rglob("*") if p.is_file()):
        storage.write_bytes(storage.join(prefix, "sources", str(path.relative_to(sources))), path.read_bytes())
    summary = import_manifest(storage.join(prefix, "sources", "sources.yaml"), storage.join(prefix, "all"))
    assert (summary["imported"], summary["quarantined"], summary["renamed_ids"]) == (24, 0, 24)
    assert len(list(dataset.iter_samples(storage.join(prefix, "all")))) == 24
