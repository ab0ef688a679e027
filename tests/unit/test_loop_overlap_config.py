"""`loop.overlap` is refused where the generators could not keep running beside the retraining, or
where a followed retraining could not warm up."""
from __future__ import annotations

import pytest

from engine.core.config import LoopConfig

BASE = {"out": "run", "pool": "pool.jsonl", "test": "test.jsonl", "base_model": {"path": "m"}, "seed_data": ["s"]}


def test_overlap_is_off_by_default_and_on_with_driver_placement_and_cpu_generators():
    assert LoopConfig(**BASE).overlap is False
    assert LoopConfig(**BASE, overlap=True).overlap is True


@pytest.mark.parametrize("setting, message", [
    ({"placement": "ray"}, "placement: driver"),
    ({"synth": {"generator_num_gpus": 1}}, "CPU generators"),
    ({"retrain": {"warmup_ratio": 0.1}}, "warm up"),
])
def test_overlap_refuses_what_it_cannot_do(setting, message):
    with pytest.raises(ValueError, match=message):
        LoopConfig(**BASE, overlap=True, **setting)
    LoopConfig(**BASE, **setting)  # the same setting without overlap is fine
