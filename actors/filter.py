"""Filter actor: applies the job's acceptance policy to everything a generator produced."""
from __future__ import annotations

import ray

from engine.core.config import VerifierConfig
from engine.synth.judge import Gold, Judged, judge
from engine.core.types import Attempt


@ray.remote
class FilterActor:
    def __init__(self, verifier_cfg: dict) -> None:
        self.cfg = VerifierConfig.model_validate(verifier_cfg)

    def ready(self) -> bool:
        return True

    def verify(self, batch: list[list[Attempt]], golds: list[Gold]) -> list[list[Judged]]:
        """`batch` is usually a generator's ObjectRef: Ray hands the attempts over without the driver."""
        return judge(batch, golds, self.cfg)
