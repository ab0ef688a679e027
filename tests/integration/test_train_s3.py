"""Training from object storage: the base model and the data both on a real S3 server (SeaweedFS)."""
from __future__ import annotations

import json
import uuid

import pytest
import yaml

from engine.data import storage
from engine.data.dataset import import_fea20k
from trainer.run import train, training_config


@pytest.mark.s3
def test_sft_reads_model_and_data_from_s3(s3, tiny_model, faces, tmp_path, monkeypatch):
    monkeypatch.setenv("FEA_CACHE_DIR", str(tmp_path / "cache"))
    prefix = f"s3://fea-test/train-{uuid.uuid4().hex[:8]}"
    for path in tiny_model.iterdir():
        if path.is_file():
            storage.write_bytes(f"{prefix}/model/{path.name}", path.read_bytes())
    imported = import_fea20k(str(faces / "samples.jsonl"), str(faces), f"{prefix}/data")
    assert imported["imported"] == 24
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"sft": {"max_steps": 2, "per_device_train_batch_size": 2, "precision": "fp32",
                                              "report_to": ["none"], "shuffle_buffer": 0}}))
    out = tmp_path / "out"
    summary = train("sft", training_config("sft", data=[f"{prefix}/data"], model=f"{prefix}/model", out=str(out),
                                           config_path=str(config)))
    # rows counts what the stream has delivered so far: 2 steps x 2 rows (+ TRL's first-row peek, prefetch)
    assert summary["global_step"] == 2 and 4 <= summary["data"]["rows"] <= 24
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["base_model"] == f"{prefix}/model"  # provenance keeps the URI, not the cache path
    assert (out / "merged" / "model.safetensors").exists()
    assert list((tmp_path / "cache").rglob("config.json"))  # the model was materialized into the cache
