"""Writer actor: writes finished partitions' shards and then their commit records (last, write-once)."""
from __future__ import annotations

import ray

from engine.partition import PartitionResult, write_partition
from engine.types import PartitionCommit


@ray.remote
class WriterActor:
    def __init__(self, out: str) -> None:
        self.out = out

    def write(self, result: PartitionResult) -> PartitionCommit:
        return write_partition(self.out, result)
