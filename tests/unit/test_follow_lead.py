"""Fixed sources ahead of a followed job (the loop's overlapped retraining): the position counts the
lead's trained rows first, each partition's start step follows from them, and a resumed lead skips
exactly what was trained."""
from __future__ import annotations

from engine.core.config import DataSource
from trainer.data import PromptFormat, SourceStats
from trainer.follow import FixedLead, FollowedSource, Position

FED = [["part-00002", 3, 0], ["part-00000", 0, 1], ["part-00001", 2, 0]]


def followed(lead_rows: int, rows_per_step: int) -> FollowedSource:
    lead = FixedLead(dataset=[{"row": i} for i in range(4)], rows=lead_rows, stats=None)
    source = FollowedSource(DataSource(uri="job"), "sft", SourceStats("job"), PromptFormat(),
                            rows_per_step=rows_per_step, lead=lead)
    source.fed = [list(entry) for entry in FED]
    return source


def test_the_lead_is_trained_before_any_partition():
    source = followed(lead_rows=5, rows_per_step=2)
    assert source.position(2) == Position([], None, lead=4)
    assert source.position(3) == Position([], ("part-00002", 1), lead=5)
    assert source.position(4) == Position([("part-00002", 3, 0), ("part-00000", 0, 1)], None, lead=5)
    assert source.position(5) == Position([(p, n, k) for p, n, k in FED], None, lead=5)
    assert Position.from_json(source.position(3).as_json()) == source.position(3)


def test_each_partition_starts_at_the_step_holding_its_first_row():
    source = followed(lead_rows=5, rows_per_step=2)
    # rows 0-4 lead; part-00002 rows 5-7 (step 3); part-00000 none (at row 8: step 5); part-00001 rows 8-9
    assert source.start_steps(source.position(5)) == {"part-00002": 3, "part-00000": 5, "part-00001": 5}
    assert source.report(5)["started_at_step"] == {"part-00002": 3, "part-00000": 5, "part-00001": 5}


def test_the_lead_repeats_its_sources_to_its_length_and_skips_what_was_trained():
    lead = FixedLead(dataset=[{"row": i} for i in range(4)], rows=6, stats=None)
    assert [r["row"] for r in lead.iter_rows()] == [0, 1, 2, 3, 0, 1]
    assert [r["row"] for r in lead.iter_rows(skip=5)] == [1]
    assert list(FixedLead(dataset=[], rows=3, stats=None).iter_rows()) == []
