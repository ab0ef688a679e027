"""retry.resumed: a stream broken by a transient fault goes on after the items it already gave."""
from __future__ import annotations

import pytest

from engine.data import retry


class _Stream:
    """Items 0..n-1; the reads listed in `breaks` fail (with `error`) after giving `at` items."""

    def __init__(self, n: int, breaks: dict[int, int], error: Exception) -> None:
        self.n, self.breaks, self.error, self.starts = n, breaks, error, []

    def read_from(self, skip: int):
        self.starts.append(skip)
        read = len(self.starts) - 1
        for given, item in enumerate(range(skip, self.n)):
            if self.breaks.get(read) == given:
                raise self.error
            yield item


def test_a_transient_fault_resumes_after_the_items_given(monkeypatch):
    monkeypatch.setenv(retry.WINDOW_ENV, "30")
    monkeypatch.setattr(retry, "_FIRST_PAUSE", 0.01)
    stream = _Stream(10, {0: 3, 1: 4}, ConnectionResetError("peer reset"))
    assert list(retry.resumed(stream.read_from, "reading x")) == list(range(10))
    assert stream.starts == [0, 3, 7]


def test_other_faults_are_raised_at_once(monkeypatch):
    monkeypatch.setenv(retry.WINDOW_ENV, "30")
    stream = _Stream(10, {0: 2}, ValueError("bad row"))
    with pytest.raises(ValueError, match="bad row"):
        list(retry.resumed(stream.read_from, "reading x"))
    assert stream.starts == [0]


def test_a_stream_that_makes_no_progress_gives_up_after_the_window(monkeypatch):
    monkeypatch.setenv(retry.WINDOW_ENV, "0.2")
    monkeypatch.setattr(retry, "_FIRST_PAUSE", 0.05)
    stream = _Stream(10, {i: 0 for i in range(1, 100)} | {0: 5}, TimeoutError("read timed out"))
    given = []
    with pytest.raises(retry.StorageUnavailableError, match="reading x: TimeoutError"):
        for item in retry.resumed(stream.read_from, "reading x"):
            given.append(item)
    assert given == [0, 1, 2, 3, 4] and set(stream.starts[1:]) == {5}


def test_a_resumed_jsonl_read_skips_exactly_the_lines_given(tmp_path):
    """What a reopened JSONL read skips: the non-blank lines already given, keeping their numbers."""
    from engine.data import dataset

    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n   \n{"id": "c"}\n{"id": "d"}\n')
    every = list(dataset._iter_lines(str(path)))
    assert [number for number, _ in every] == [1, 3, 5, 6]
    for given in range(len(every) + 1):
        assert list(dataset._lines(str(path), skip=given)) == every[given:]
