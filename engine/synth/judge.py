"""The filter stage: every generated completion gets a Verdict under the job's acceptance policy.

A completion the backend could not produce (Attempt.error) is judged too, as a rejection whose
reason is the error, so it uses up an attempt like any other failure and is never silently lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.core.config import VerifierConfig
from engine.core.types import Attempt, Verdict


@dataclass(frozen=True)
class Gold:
    """What a sample's completions are judged against."""

    aus: tuple[str, ...]
    labels: tuple[str, ...]
    label_set: tuple[str, ...] | None


@dataclass(frozen=True)
class Judged:
    attempt: Attempt
    verdict: Verdict


def judge(batch: Sequence[Sequence[Attempt]], golds: Sequence[Gold], cfg: VerifierConfig) -> list[list[Judged]]:
    """Verdicts for a generator's output (n Attempts per request), one Gold per request."""
    from engine.core.verifier import VerifyItem, verify_batch

    if len(batch) != len(golds):
        raise ValueError(f"{len(batch)} generated requests but {len(golds)} gold records")
    items = [VerifyItem(a.completion, g.aus, g.labels, a.sample_id, a.attempt, g.label_set)
             for attempts, g in zip(batch, golds) for a in attempts]
    verdicts = iter(verify_batch(items, cfg))
    judged = []
    for attempts in batch:
        row = []
        for a in attempts:
            verdict = next(verdicts)
            if a.error:
                verdict = _failed(verdict, a.error)
            row.append(Judged(a, verdict))
        judged.append(row)
    return judged


def _failed(verdict: Verdict, error: str) -> Verdict:
    """The verdict of an empty completion (its true scores), rejected with the generation error as reason."""
    return Verdict(verdict.sample_id, verdict.attempt, verdict.scores, False, (f"generation_error: {error}",),
                   (), None, verdict.policy, verdict.verifier_version)
