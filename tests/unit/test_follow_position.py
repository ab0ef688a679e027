"""Where a followed stream stands after N trained rows: whole partitions, then at most one in part."""
from __future__ import annotations

from trainer.follow import Position, position_after

FED = [["part-00002", 3, 0], ["part-00000", 0, 1], ["part-00001", 2, 0], ["part-00003", 3, 0]]


def test_the_position_splits_the_feeding_order_at_the_trained_rows():
    assert position_after(FED, 0) == Position([], None)
    assert position_after(FED, 2) == Position([], ("part-00002", 2))
    # a partition with no rows right after a whole one counts as consumed with it
    assert position_after(FED, 3) == Position([("part-00002", 3, 0), ("part-00000", 0, 1)], None)
    assert position_after(FED, 4) == Position([("part-00002", 3, 0), ("part-00000", 0, 1)], ("part-00001", 1))
    everything = position_after(FED, 100)  # the last step may be short: never past what was fed
    assert [pid for pid, _, _ in everything.consumed] == ["part-00002", "part-00000", "part-00001", "part-00003"]
    assert everything.partial is None and everything.rows == 8


def test_the_position_survives_its_json():
    position = position_after(FED, 6)
    assert Position.from_json(position.as_json()) == position and position.rows == 6
