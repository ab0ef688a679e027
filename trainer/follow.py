"""Training on a synthesis job while it runs (`fea train ... --follow`).

The followed source is one pass over the job's partitions, each fed once, in the order they are
found committed, until the job's summary.json is written (`fea synth` writes it after its last
commit) and every partition committed before it has been fed, or until `follow_timeout`.

Exactly once across a kill: the stream records which partition each row came from (`fed`: partition
id -> rows, in feeding order). The trainer takes exactly `rows_per_step` rows per optimizer step, so
at a checkpoint of step N the first N * rows_per_step rows are the trained ones: the partitions they
cover (the last possibly in part) are written into the checkpoint folder (FOLLOW_STATE) before the
trainer writes its own trainer_state.json there (the file `trainer.common` treats as a checkpoint's
last). A resumed run restores that position and continues from it; the trainer's own skipping of
already seen batches is switched off (`ignore_data_skip`), since the stream already starts after them.

Rows are shuffled within each partition only (by seed and partition id), so a partition's rows come
in the same order every time it is read.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from engine.core.config import DataSource
from engine.data.storage import redact
from trainer.data import PromptFormat, SourceStats, Stage, stream, training_row, usable
from trainer.partitions import committed_partitions, is_finished, partition_id, partition_samples

log = logging.getLogger(__name__)

FOLLOW_STATE = "follow_state.json"
POLL_SECONDS = 1.0
# A followed run ends when the job's data does; the trainer still needs a step bound for a stream.
UNBOUNDED_STEPS = 1_000_000


@dataclass
class Position:
    """Where training stands in the followed stream: fully trained partitions and one partly trained one."""

    # (partition id, rows, rows skipped for want of a description), in feeding order
    consumed: list[tuple[str, int, int]] = field(default_factory=list)
    partial: tuple[str, int] | None = None  # (partition id, rows trained so far)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows, _ in self.consumed) + (self.partial[1] if self.partial else 0)

    def as_json(self) -> dict[str, Any]:
        return {"consumed": [list(c) for c in self.consumed], "partial": list(self.partial) if self.partial else None}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Position":
        partial = raw.get("partial")
        return cls([(str(p), int(n), int(k)) for p, n, k in raw["consumed"]],
                   (str(partial[0]), int(partial[1])) if partial else None)


def position_after(fed: list[list], rows: int) -> Position:
    """The position once the first `rows` rows of the stream `fed` ([partition id, rows, skipped] in
    feeding order) are trained."""
    position, left = Position(), rows
    for pid, count, skipped in fed:
        if count <= left:
            position.consumed.append((pid, count, skipped))
            left -= count
        else:
            if left > 0:
                position.partial = (pid, left)
            break
    return position


def read_position(checkpoint: Path) -> Position:
    path = checkpoint / FOLLOW_STATE
    if not path.exists():
        from trainer.common import TrainingError

        raise TrainingError(f"{checkpoint} has no {FOLLOW_STATE}: it was not written by a --follow run, so the "
                            "partitions it trained on are unknown; resume it without --follow")
    return Position.from_json(json.loads(path.read_text()))


class FollowedSource:
    """One followed synthesis output as a stream of training rows, and the position reached in it."""

    def __init__(self, source: DataSource, stage: Stage, stats: SourceStats, fmt: PromptFormat, *,
                 rows_per_step: int, seed: int = 0, shuffle: bool = False, start: Position | None = None):
        self.source, self.stage, self.stats, self.fmt = source, stage, stats, fmt
        self.rows_per_step, self.seed, self.shuffle = rows_per_step, seed, shuffle
        self.start = start or Position()
        self.fed: list[list] = []
        self.ended = False
        self.job_finished = False
        self.timed_out = False

    def dataset(self):
        return stream(self.rows, self.stage)

    # ------------------------------------------------------------ the stream
    def rows(self) -> Iterator[dict[str, Any]]:
        """A read that ended leaves nothing for a next one (a second epoch): the pass is done. A read
        dropped part way (a trainer peeking at the first row) leaves the next one to start afresh."""
        if self.ended:
            return
        self.fed = [[pid, rows, skipped] for pid, rows, skipped in self.start.consumed]
        seen_ids: set[str] = set()
        if self.start.partial:
            pid, rows = self.start.partial
            yield from self._partition_rows(self._commit(pid), seen_ids, skip=rows)
        deadline = time.monotonic() + self.source.follow_timeout if self.source.follow_timeout else None
        waiting = False
        while True:
            finished = is_finished(self.source.uri)  # before listing: a finished job's listing is complete
            known = {entry[0] for entry in self.fed}
            new = [c for c in committed_partitions(self.source.uri) if partition_id(c.partition) not in known]
            for commit in new:
                yield from self._partition_rows(commit, seen_ids)
            if new:
                waiting = False
                continue
            if finished:
                self.job_finished = True
                break
            if deadline is not None and time.monotonic() > deadline:
                self.timed_out = True
                log.warning("%s: follow timeout reached before the job finished; training ends with what was "
                            "committed", redact(self.source.uri))
                break
            if not waiting:
                log.info("following %s: waiting for the job to commit more partitions", redact(self.source.uri))
                waiting = True
            time.sleep(POLL_SECONDS)
        self.ended = True
        if not any(entry[1] for entry in self.fed):  # else an opaque error deep inside the trainer
            raise ValueError(f"{redact(self.source.uri)}: no usable {self.stage.upper()} rows in the partitions "
                             f"committed before the job {'finished' if self.job_finished else 'timed out'}")

    def _commit(self, pid: str):
        return committed_partitions(self.source.uri, [pid])[0]

    def _partition_rows(self, commit, seen_ids: set[str], skip: int = 0) -> Iterator[dict[str, Any]]:
        pid = partition_id(commit.partition)
        entry = [pid, skip, 0]
        self.fed.append(entry)
        read = list(partition_samples(self.source.uri, commit, self.source.format, seen_ids))
        samples = [s for s in read if usable(s, self.stage, self.stats)]
        entry[2] = len(read) - len(samples)
        if self.shuffle:
            random.Random(f"{self.seed}:{pid}").shuffle(samples)
        log.info("following %s: %s (%d rows)", redact(self.source.uri), pid, len(samples) - skip)
        for sample in samples[skip:]:
            entry[1] += 1
            yield training_row(sample, self.stage, self.fmt)

    # ------------------------------------------------------------ the position
    def position(self, global_step: int) -> Position:
        return position_after(self.fed, global_step * self.rows_per_step)

    def report(self, global_step: int) -> dict[str, Any]:
        """What the run summary says of this source: the partitions trained on, and how the follow ended."""
        position = self.position(global_step)
        return {"rows": position.rows, "skipped_no_description": sum(k for _, _, k in position.consumed),
                "partitions": [pid for pid, _, _ in position.consumed],
                "follow": {"partial_partition": list(position.partial) if position.partial else None,
                           "job_finished": self.job_finished, "timed_out": self.timed_out}}

    def callback(self, out: Path):
        """A TrainerCallback writing the position into each checkpoint folder before the trainer saves it."""
        from transformers import TrainerCallback

        followed = self

        class SavePosition(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if control.should_save and state.is_world_process_zero:
                    folder = out / f"checkpoint-{state.global_step}"
                    folder.mkdir(parents=True, exist_ok=True)
                    text = json.dumps(followed.position(state.global_step).as_json(), indent=1)
                    (folder / FOLLOW_STATE).write_text(text + "\n")
                return control

        return SavePosition()


# ---------------------------------------------------------------- wiring into a training run
def follows(cfg) -> bool:
    return any(source.follow for source in cfg.data)


def followed_run(cfg, stage: Stage, fmt: PromptFormat, rows_per_step: int, resumed_from: Path | None):
    """(FollowedSource, DataStats) for a config whose single source is followed; a resumed run starts
    where its checkpoint's position says."""
    from trainer.data import DataStats, check_sources

    check_sources(cfg.data)
    stats = DataStats([SourceStats(cfg.data[0].uri)])
    if cfg.shuffle_buffer > 1:
        log.info("following: rows are shuffled within each partition (shuffle_buffer applies to a fixed source)")
    followed = FollowedSource(cfg.data[0], stage, stats.sources[0], fmt, rows_per_step=rows_per_step,
                              seed=cfg.seed, shuffle=cfg.shuffle_buffer > 1,
                              start=read_position(resumed_from) if resumed_from else None)
    return followed, stats


def data_report(followed: FollowedSource | None, stats, global_step: int) -> dict[str, Any]:
    """The run summary's `data`: with a followed source, the partitions and rows trained on (a resumed
    run counts those trained before its checkpoint too)."""
    if followed is None:
        return stats.as_dict()
    source = {"uri": followed.stats.uri, **followed.report(global_step)}
    return {"rows": source["rows"], "skipped_no_description": source["skipped_no_description"], "sources": [source]}
