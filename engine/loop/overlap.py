"""A round's synthesis and retraining side by side (`loop.overlap`).

Synthesis runs in a thread of the driver (its Ray actors do the work); the retraining starts in the
driver once the job has committed its first partition and follows the job (trainer/follow.py): the
fixed sources (seed data, earlier rounds' accepted shards) come first, then every partition of this
round's job once, as it is committed, until the job writes its summary.json. Follow mode sets the
number of steps: one pass over that stream, so a linear schedule barely decays and warm-up needs
max_steps (checked by LoopConfig).

Each step keeps its own record (synth/step.json, retrain/step.json). A rerun of a round killed
mid-overlap resumes both: the synthesis from its commits, the retraining from its last checkpoint,
whose follow_state.json says which partitions it had trained on, so none is fed twice.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from engine.data.commits import commits_dir
from engine.data import storage

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class SynthesisThread:
    """A synthesis step run beside the driver's training; its record or its error once it ends."""

    def __init__(self, out: str, step: Callable[[], dict[str, Any]]) -> None:
        self.out, self.step = out, step
        self.record: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fea-loop-synth", daemon=True)

    def start(self) -> "SynthesisThread":
        self.thread.start()
        return self

    def _run(self) -> None:
        from trainer import follow
        from trainer.partitions import is_finished

        try:
            self.record = self.step()
        except BaseException as err:  # raised in the driver's thread by `result`
            self.error = err
        finally:
            if not is_finished(self.out):  # a training that follows the job must not wait for it forever
                follow.abort(self.out)
            self.done.set()

    def wait_for_first_commit(self) -> float:
        """Seconds waited until the job committed a partition (or ended without one)."""
        started = time.monotonic()
        while not self.done.is_set() and not storage.list_files(commits_dir(self.out), ".json"):
            time.sleep(POLL_SECONDS)
        return time.monotonic() - started

    def result(self) -> dict[str, Any]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.record is not None
        return self.record


def synth_and_retrain(synth_out: str, synth_step: Callable[[], dict[str, Any]],
                      retrain_step: Callable[[list[dict[str, Any]], dict[str, Any]], dict[str, Any]],
                      fixed: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `synth_step` in a thread and, once its job has committed a first partition,
    `retrain_step(data, overlap_record)` on `fixed` + the job followed; returns both step records.

    A job that ended with nothing accepted is not followed (nothing to learn from it). Whatever
    fails, the synthesis is waited for, so that its record is written when it succeeded."""
    synthesis = SynthesisThread(synth_out, synth_step).start()
    try:
        waited = synthesis.wait_for_first_commit()
        if synthesis.error is not None:
            raise synthesis.error
        data: list[dict[str, Any]] = [{"uri": uri, "weight": 1.0} for uri in fixed]
        if not (synthesis.done.is_set() and _nothing_accepted(synthesis)):
            data.append({"uri": synth_out, "weight": 1.0, "follow": True})
        overlap = {"waited_for_first_commit_s": round(waited, 3), "retrain_started_at": time.time(),
                   "followed": synth_out if data[-1].get("follow") else None}
        retrained = retrain_step(data, overlap)
    except BaseException as err:
        synthesis.thread.join()
        if synthesis.error is not None and synthesis.error is not err:  # the cause of e.g. FollowAborted
            raise synthesis.error from err
        raise
    return synthesis.result(), retrained


def _nothing_accepted(synthesis: SynthesisThread) -> bool:
    return synthesis.error is None and synthesis.record is not None and synthesis.record["summary"]["accepted"] == 0
