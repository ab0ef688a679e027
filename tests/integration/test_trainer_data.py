"""Training data: FEA-20K / canonical / synthesis sources -> streamed TRL rows, mixed by weight."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from datasets import IterableDataset

from engine.core.config import DataSource
from engine.data.dataset import iter_samples
from engine.core.prompts import prompt_text
from trainer.data import PromptFormat, build_dataset, count_rows


def _copy_jsonl(faces: Path, out: Path, edit) -> Path:
    """A copy of the face set (JSONL with `edit` applied, images beside it) in out's folder."""
    if not (out.parent / "images").exists():
        shutil.copytree(faces / "images", out.parent / "images")
    lines = [json.dumps(edit(i, json.loads(line)))
             for i, line in enumerate((faces / "samples.jsonl").read_text().splitlines())]
    out.write_text("\n".join(lines) + "\n")
    return out


def test_sft_rows_hold_image_prompt_and_reference(faces):
    uri = str(faces / "samples.jsonl")
    dataset, stats = build_dataset([DataSource(uri=uri)], "sft")
    assert isinstance(dataset, IterableDataset)  # streamed, nothing copied
    rows = list(dataset)
    samples = list(iter_samples(uri))
    assert len(rows) == len(samples) == 24
    row, sample = rows[0], samples[0]
    assert row["images"][0].size == (112, 112)
    user = row["prompt"][0]
    assert user["role"] == "user" and user["content"][0]["type"] == "image"
    assert user["content"][1]["text"] == prompt_text(sample, hint=False)  # the evaluation prompt, no label hint
    assert row["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": sample.description}]}]
    assert stats.as_dict()["rows"] == 24


def test_hint_fraction_gives_a_stable_share_of_sft_prompts_the_label_hint(faces):
    uri = str(faces / "samples.jsonl")
    by_reference = {s.description: s for s in iter_samples(uri)}  # each face has its own reasoning text
    fmt = PromptFormat(style="compact", hint_fraction=0.5)
    first = list(build_dataset([DataSource(uri=uri)], "sft", fmt=fmt)[0])
    hinted = [row for row in first if "Ground Truth" in row["prompt"][0]["content"][1]["text"]]
    assert 0 < len(hinted) < len(first)  # about half of 24
    for row in first:
        sample = by_reference[row["completion"][0]["content"][0]["text"]]
        expected = prompt_text(sample, hint=fmt.hint_for(sample.id), style="compact")
        assert row["prompt"][0]["content"][1]["text"] == expected
    again = list(build_dataset([DataSource(uri=uri)], "sft", fmt=fmt)[0])  # the same rows get the hint every pass
    assert [r["prompt"] for r in again] == [r["prompt"] for r in first]
    assert not any("Ground Truth" in row["prompt"][0]["content"][1]["text"]
                   for row in build_dataset([DataSource(uri=uri)], "grpo", fmt=fmt)[0])  # GRPO never


def test_sft_skips_samples_without_description_and_counts_them(faces, tmp_path):
    blank = {3, 10}
    uri = str(_copy_jsonl(faces, tmp_path / "blank.jsonl",
                          lambda i, r: {**r, "description": "  " if i in blank else r["description"]}))
    dataset, stats = build_dataset([DataSource(uri=uri)], "sft")
    assert len(list(dataset)) == 22
    list(dataset)  # a second pass (epoch) does not double-count
    summary = stats.as_dict()
    assert summary["rows"] == 22 and summary["skipped_no_description"] == 2
    assert count_rows([DataSource(uri=uri)], "sft") == 22
    assert count_rows([DataSource(uri=uri)], "grpo") == 24  # GRPO needs no description
    empty = str(_copy_jsonl(faces, tmp_path / "empty.jsonl", lambda i, r: {**r, "description": ""}))
    with pytest.raises(ValueError, match="no usable SFT rows"):
        list(build_dataset([DataSource(uri=empty)], "sft")[0])


def test_grpo_rows_carry_gold_labels(faces):
    uri = str(faces / "samples.jsonl")
    rows = list(build_dataset([DataSource(uri=uri)], "grpo")[0])
    samples = {s.id: s for s in iter_samples(uri)}
    assert len(rows) == 24
    for row in rows:
        sample = samples[row["sample_id"]]
        assert row["gold_aus"] == list(sample.aus) and row["gold_labels"] == list(sample.labels)
        assert row["dataset"] == "SynthFaces" and row["image"].size == (112, 112)
        assert row["prompt"][0]["content"][1]["text"] == prompt_text(sample, hint=False)


def test_sources_are_mixed_by_weight(faces, tmp_path):
    a = str(faces / "samples.jsonl")
    b = str(_copy_jsonl(faces, tmp_path / "b.jsonl", lambda i, r: {**r, "id": "b-" + r["id"]}))
    dataset, _ = build_dataset([DataSource(uri=a, weight=3.0), DataSource(uri=b, weight=1.0)], "grpo", seed=1,
                               stopping="first_exhausted")
    ids = [row["sample_id"] for row in dataset]
    from_b = sum(i.startswith("b-") for i in ids)
    # first_exhausted stops when source a (drawn 3 times out of 4) runs out after its 24 rows
    assert Counter(i.startswith("b-") for i in ids)[False] == 24
    assert 3 <= from_b <= 15, from_b
    with pytest.raises(ValueError, match="no training data"):
        build_dataset([], "sft")


def test_sft_rows_of_equal_weight_sources_alternate_from_the_start(faces, tmp_path):
    a = str(faces / "samples.jsonl")
    b = str(_copy_jsonl(faces, tmp_path / "b.jsonl", lambda i, r: {
        **r, "id": "b-" + r["id"], "description": r["description"].replace("<think>", "<think>[b] ", 1)}))
    mixed, _ = build_dataset([DataSource(uri=a, weight=1.0), DataSource(uri=b, weight=1.0)], "sft", seed=0)
    from_b = [r["completion"][0]["content"][0]["text"].startswith("<think>[b] ") for r in mixed]
    assert 6 <= sum(from_b[:24]) <= 18, from_b[:24]  # both sources from the start, not one after the other
    # all_exhausted: every row of both sources is seen
    assert sum(from_b) >= 24 and len(from_b) - sum(from_b) >= 24
