"""Writer actor: writes finished partitions' shards and then their commit records (last, write-once)."""
from __future__ import annotations

import threading

import ray

from engine.data import lease, shards
from engine.data.commits import existing_shards
from engine.synth.partition import PartitionResult, write_partition
from engine.core.types import PartitionCommit


@ray.remote
class WriterActor:
    def __init__(self, out: str, lease_token: str | None = None) -> None:
        self.out = out
        self.lease_token = lease_token  # the driver's lease on OUT; checked before each partition
        # Listed once (a restarted actor lists again), so empty shard kinds cost no deletes.
        self.leftovers = existing_shards(out)
        # While the job starts up the writer has nothing to do: spend that time on the first write's
        # one-off costs. A write arriving meanwhile waits on the import lock, so nothing runs twice.
        threading.Thread(target=shards.warm_up, name="fea-writer-warm-up", daemon=True).start()

    def write(self, result: PartitionResult) -> PartitionCommit:
        if self.lease_token:
            lease.verify(self.out, self.lease_token)  # a driver that lost OUT writes nothing more there
        return write_partition(self.out, result, self.leftovers)
