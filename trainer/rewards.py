"""GRPO reward functions: TRL's callable interface over engine.core.verifier.

`VerifierRewards(cfg).functions()` returns three plain callables named `au`, `acc` and `format`
(TRL logs them as rewards/au/mean, ...). Each returns one float per completion, taken from
`engine.core.verifier.compute_scores`, the same function the synthesis filter calls. Their weights are
the verifier's (`reward_weights()`, passed as GRPOConfig.reward_weights), so TRL's weighted sum is
the verifier's total. (The verifier also clamps its total to +-total_clamp; with the paper's unit
weights the sum stays within [-1, 3] and the clamp never applies.)

TRL calls the three functions one after another on the same batch; the verifier runs once per
completion and the other two functions reuse its Scores. With a `recorder`, every scored
completion is appended to a JSONL file (step, sample id, completion, gold, rewards), so what the
trainer optimised can be audited and checked against the verifier.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from engine.core.config import VerifierConfig
from engine.core.facs import label_set_for
from engine.core.types import Scores
from engine.core.verifier import compute_scores

REWARD_NAMES = ("au", "acc", "format")


def completion_text(completion: Any) -> str:
    """TRL hands conversational completions as [{"role": "assistant", "content": str | parts}]."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        content = "".join(part.get("text") or "" for part in content)
    return content


class RewardRecorder:
    """Appends one JSON line per scored completion; flushed per batch so a killed run keeps its log."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None

    def drop_from_step(self, step: int) -> int:
        """Forget rows of steps >= `step` (a resumed run redoes them); returns how many were dropped."""
        if not self.path.exists():
            return 0
        rows = read_reward_records(self.path)
        kept = [row for row in rows if row["step"] is None or row["step"] < step]
        self.path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
        return len(rows) - len(kept)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_reward_records(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


class VerifierRewards:
    def __init__(self, cfg: VerifierConfig, recorder: RewardRecorder | None = None):
        self.cfg = cfg
        self.recorder = recorder
        self._batch: tuple[Sequence[Any], Sequence[Any]] | None = None
        self._scores: list[Scores] = []

    def reward_weights(self) -> list[float]:
        return [self.cfg.au_weight, self.cfg.acc_weight, self.cfg.format_weight]

    def functions(self) -> list[Callable[..., list[float]]]:
        return [self._function(name) for name in REWARD_NAMES]

    def _function(self, name: str) -> Callable[..., list[float]]:
        def reward(completions: Sequence[Any], gold_aus: Sequence[Sequence[str]],
                   gold_labels: Sequence[Sequence[str]], dataset: Sequence[str], **kwargs: Any) -> list[float]:
            scores = self.scores(completions, gold_aus, gold_labels, dataset, **kwargs)
            return [getattr(s, name) for s in scores]

        reward.__name__ = reward.__qualname__ = name
        return reward

    def scores(self, completions: Sequence[Any], gold_aus: Sequence[Sequence[str]],
               gold_labels: Sequence[Sequence[str]], dataset: Sequence[str], **kwargs: Any) -> list[Scores]:
        """Verifier scores of one batch, computed once however many reward functions ask."""
        # TRL passes the same list objects to each reward function of one batch. Holding on to them
        # (not just their ids) keeps a later batch from reusing their memory and looking identical.
        cached = self._batch
        if cached is None or cached[0] is not completions or cached[1] is not gold_aus:
            texts = [completion_text(c) for c in completions]
            self._scores = [compute_scores(text, aus, labels, self.cfg, label_set=label_set_for(name))
                            for text, aus, labels, name in zip(texts, gold_aus, gold_labels, dataset, strict=True)]
            self._batch = (completions, gold_aus)
            if self.recorder is not None:
                self._record(texts, gold_aus, gold_labels, dataset, kwargs)
        return self._scores

    def _record(self, texts: list[str], gold_aus: Sequence[Sequence[str]], gold_labels: Sequence[Sequence[str]],
                dataset: Sequence[str], kwargs: dict[str, Any]) -> None:
        state = kwargs.get("trainer_state")
        step = state.global_step if state is not None else None
        sample_ids = kwargs.get("sample_id") or [None] * len(texts)
        self.recorder.write([
            {"step": step, "sample_id": sid, "dataset": name, "completion": text, "gold_aus": list(aus),
             "gold_labels": list(labels), **s.as_dict()}
            for text, aus, labels, name, sid, s in zip(texts, gold_aus, gold_labels, dataset, sample_ids, self._scores)
        ])
