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

Fixed sources beside the followed one (the loop's retraining: seed data and earlier rounds' outputs)
come first: their weighted mix, `num_train_epochs` passes of their counted rows (`FixedLead`), then
the followed partitions. The lead's size is known, so the position also says how much of it was
trained (`lead`), and a partition's first row tells the optimizer step it started at.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
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
    lead: int = 0  # rows of the fixed sources' lead trained (all of them before any partition)

    @property
    def rows(self) -> int:
        """Rows of the followed partitions trained."""
        return sum(rows for _, rows, _ in self.consumed) + (self.partial[1] if self.partial else 0)

    def as_json(self) -> dict[str, Any]:
        return {"consumed": [list(c) for c in self.consumed], "partial": list(self.partial) if self.partial else None,
                "lead": self.lead}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Position":
        partial = raw.get("partial")
        return cls([(str(p), int(n), int(k)) for p, n, k in raw["consumed"]],
                   (str(partial[0]), int(partial[1])) if partial else None, int(raw.get("lead", 0)))


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


@dataclass
class FixedLead:
    """The fixed sources' rows fed ahead of the followed partitions: `rows` rows of their weighted mix,
    read again from its start when one pass is shorter (images stay encoded, as the sources hold them)."""

    dataset: Any  # datasets.IterableDataset
    rows: int
    stats: Any  # trainer.data.DataStats of the fixed sources

    def iter_rows(self, skip: int = 0) -> Iterator[dict[str, Any]]:
        """Rows `skip`.. of the lead; skipped rows are read too, so the stats count every source row."""
        def passes() -> Iterator[dict[str, Any]]:
            while True:
                empty = True
                for row in self.dataset:
                    empty = False
                    yield row
                if empty:
                    return

        return itertools.islice(passes(), skip, self.rows)


class FollowedSource:
    """One followed synthesis output as a stream of training rows, and the position reached in it."""

    def __init__(self, source: DataSource, stage: Stage, stats: SourceStats, fmt: PromptFormat, *,
                 rows_per_step: int, seed: int = 0, shuffle: bool = False, start: Position | None = None,
                 lead: FixedLead | None = None):
        self.source, self.stage, self.stats, self.fmt, self.lead = source, stage, stats, fmt, lead
        self.lead_rows = lead.rows if lead else 0
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
        if self.lead:
            yield from self.lead.iter_rows(skip=self.start.lead)
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
            if self.source.uri in _ABORTED:  # the process running the job gave up on it
                raise FollowAborted(f"{redact(self.source.uri)}: the synthesis job failed; no more partitions come")
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
        if not self.lead_rows and not any(entry[1] for entry in self.fed):  # else an opaque error deep inside the trainer
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
        rows = global_step * self.rows_per_step
        lead = min(rows, self.lead_rows)
        position = position_after(self.fed, rows - lead)
        position.lead = lead
        return position

    def start_steps(self, position: Position) -> dict[str, int]:
        """The optimizer step (1-based) whose batch holds each fed partition's first row."""
        steps, row = {}, position.lead
        for pid, rows in [(p, n) for p, n, _ in position.consumed] + ([position.partial] if position.partial else []):
            steps[pid] = row // self.rows_per_step + 1
            row += rows
        return steps

    def report(self, global_step: int) -> dict[str, Any]:
        """What the run summary says of this source: the partitions trained on, the step each started
        at, and how the follow ended."""
        position = self.position(global_step)
        return {"rows": position.rows, "skipped_no_description": sum(k for _, _, k in position.consumed),
                "partitions": [pid for pid, _, _ in position.consumed],
                "started_at_step": self.start_steps(position),
                "follow": {"partial_partition": list(position.partial) if position.partial else None,
                           "job_finished": self.job_finished, "timed_out": self.timed_out}}

    def spent(self, global_step: int) -> bool:
        """The stream has ended and `global_step` steps trained all of it."""
        fed = self.lead_rows + sum(entry[1] for entry in self.fed)
        return self.ended and global_step * self.rows_per_step >= fed

    def callback(self, out: Path):
        """A TrainerCallback writing the position into each checkpoint folder before the trainer saves it,
        and ending training at the step that trained the stream's last row (the trainer reads one batch
        ahead, so it knows by then): otherwise it would start an empty pass, seconds of work for nothing.
        One process only: several ranks end together through the trainer's own end of data."""
        from transformers import TrainerCallback

        followed = self

        class SavePosition(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if control.should_save and state.is_world_process_zero:
                    folder = out / f"checkpoint-{state.global_step}"
                    folder.mkdir(parents=True, exist_ok=True)
                    text = json.dumps(followed.position(state.global_step).as_json(), indent=1)
                    (folder / FOLLOW_STATE).write_text(text + "\n")
                if args.world_size == 1 and followed.spent(state.global_step):  # ranks must stop together
                    control.should_training_stop = True
                return control

        return SavePosition()


# ---------------------------------------------------------------- wiring into a training run
def follows(cfg) -> bool:
    return any(source.follow for source in cfg.data)


def followed_run(cfg, stage: Stage, fmt: PromptFormat, rows_per_step: int, resumed_from: Path | None):
    """(FollowedSource, DataStats) for a config with one followed source, and any fixed ones (fed
    first); a resumed run starts where its checkpoint's position says."""
    from trainer.data import DataStats, check_sources

    fixed = [source for source in cfg.data if not source.follow]
    followed_sources = [source for source in cfg.data if source.follow]
    if len(followed_sources) != 1:
        raise ValueError(f"a followed run follows one synthesis output, not {len(followed_sources)}")
    check_sources(followed_sources)
    live = SourceStats(followed_sources[0].uri)
    lead = fixed_lead(cfg, fixed, stage, fmt) if fixed else None
    stats = DataStats([*(lead.stats.sources if lead else []), live])
    if cfg.shuffle_buffer > 1:
        log.info("following: rows are shuffled within each partition (shuffle_buffer applies to a fixed source)")
    followed = FollowedSource(followed_sources[0], stage, live, fmt, rows_per_step=rows_per_step,
                              seed=cfg.seed, shuffle=cfg.shuffle_buffer > 1,
                              start=read_position(resumed_from) if resumed_from else None, lead=lead)
    return followed, stats


def fixed_lead(cfg, fixed: list[DataSource], stage: Stage, fmt: PromptFormat) -> FixedLead:
    """The fixed sources' mix as a lead of num_train_epochs passes over their counted rows (the length
    a run over them alone would have)."""
    from trainer.data import build_dataset, count_rows

    dataset, stats = build_dataset(fixed, stage, seed=cfg.seed, stopping=cfg.mix_stopping,
                                   shuffle_buffer=cfg.shuffle_buffer, fmt=fmt)
    rows = math.ceil(count_rows(fixed, stage) * cfg.num_train_epochs)
    log.info("following: %d rows of %d fixed source(s) first, then the followed partitions", rows, len(fixed))
    return FixedLead(dataset.decode(False), rows, stats)


def data_report(followed: FollowedSource | None, stats, global_step: int) -> dict[str, Any]:
    """The run summary's `data`: with a followed source, the partitions and rows trained on (a resumed
    run counts those trained before its checkpoint too), after the fixed sources' own counts."""
    if followed is None:
        return stats.as_dict()
    source = {"uri": followed.stats.uri, **followed.report(global_step)}
    fixed = [s.as_dict() for s in stats.sources[:-1]]
    if fixed:
        source["lead_rows_trained"] = followed.position(global_step).lead
    return {"rows": sum(s["rows"] for s in fixed) + source["rows"],
            "skipped_no_description": sum(s["skipped_no_description"] for s in [*fixed, source]),
            "sources": [*fixed, source]}


# ---------------------------------------------------------------- giving up on a job in this process
_ABORTED: set[str] = set()


class FollowAborted(RuntimeError):
    """The job a followed source reads was abandoned by the process that ran it."""


def abort(uri: str) -> None:
    """Make a followed source of `uri` in this process stop waiting (its job will write no summary)."""
    _ABORTED.add(uri)
