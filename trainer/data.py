"""Committed shards -> TRL datasets, streamed and mixed by weight.

Both stages get a `datasets.IterableDataset` built with `IterableDataset.from_generator` over
`engine.data.dataset.iter_samples`: rows are read while training runs, nothing is copied first. TRL 1.16
takes iterable datasets in SFTTrainer and GRPOTrainer (GRPO rebuilds its prompt groups from the
stream), on the condition that `max_steps` is set: `count_rows` gives the row count when a run is
sized in epochs instead. Several sources are mixed with `datasets.interleave_datasets`, sampled by
their normalised weights.

Rows (the formats TRL documents for vision-language data):
- SFT:  {"images": [image], "prompt": [user message], "completion": [assistant message]}, where the
  user message is engine.core.prompts' evaluation prompt (no label hint) and the completion is the
  sample's reference `description`. Samples without a description cannot teach anything; they are
  skipped and counted in `DataStats` (reported in the run summary).
- GRPO: {"prompt": [user message], "image": image, "gold_aus", "gold_labels", "dataset", "sample_id"};
  the extra columns reach the reward functions as keyword arguments.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

from engine.core.config import DataSource
from engine.core.prompts import PromptStyle
from engine.data.storage import redact
from engine.core.types import Sample, sha256_hex

log = logging.getLogger(__name__)

Stage = Literal["sft", "grpo"]


@dataclass
class SourceStats:
    """What one source has delivered so far (every usable sample after a full pass); ids are kept so
    repeated passes (epochs) are not double-counted."""

    uri: str
    rows: set[str] = field(default_factory=set)
    skipped_no_description: set[str] = field(default_factory=set)
    # Synthesis outputs only: the ids of the partitions read (a followed source: those trained on), in order.
    partitions: list[str] | None = None

    def partition_read(self, partition: str) -> None:
        self.partitions = self.partitions if self.partitions is not None else []
        if partition not in self.partitions:
            self.partitions.append(partition)

    def as_dict(self) -> dict[str, Any]:
        found = {"uri": self.uri, "rows": len(self.rows), "skipped_no_description": len(self.skipped_no_description)}
        return found if self.partitions is None else {**found, "partitions": self.partitions}


@dataclass
class DataStats:
    sources: list[SourceStats]

    def as_dict(self) -> dict[str, Any]:
        per_source = [s.as_dict() for s in self.sources]
        return {
            "rows": sum(s["rows"] for s in per_source),
            "skipped_no_description": sum(s["skipped_no_description"] for s in per_source),
            "sources": per_source,
        }


# ---------------------------------------------------------------- row formats
def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message in the fixed Arrow shape {role, content: [{type, text}]}; other keys are an error."""
    content = message["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    parts = []
    for part in content:
        unknown = set(part) - {"type", "text"}
        if unknown:
            raise ValueError(f"chat message part with unsupported keys {sorted(unknown)}: {part}")
        parts.append({"type": part["type"], "text": part.get("text")})
    return {"role": message["role"], "content": parts}


@dataclass(frozen=True)
class PromptFormat:
    """How samples become prompts: the template, and the share of SFT rows whose prompt carries the
    label hint (0, the paper's SFT, trains on the evaluation prompt only)."""

    style: PromptStyle = "full"
    hint_fraction: float = 0.0

    def hint_for(self, sample_id: str) -> bool:
        # Chosen by a hash of the id, so a sample keeps its prompt across epochs, ranks and resumes.
        return self.hint_fraction > 0 and int(sha256_hex(sample_id.encode())[:8], 16) < self.hint_fraction * 2**32


def prompt_messages(sample: Sample, fmt: PromptFormat = PromptFormat(), hint: bool = False) -> list[dict[str, Any]]:
    """The prompt as the model sees it: by default the evaluation prompt (no label hint)."""
    from engine.core.prompts import build_messages

    return [_message(m) for m in build_messages(sample, hint=hint, style=fmt.style)]


def _image(sample: Sample) -> dict[str, Any]:
    # Encoded bytes go straight into the Image feature, decoded to PIL only when a row is read.
    return {"bytes": sample.image, "path": None}


def sft_row(sample: Sample, fmt: PromptFormat = PromptFormat()) -> dict[str, Any]:
    return {
        "images": [_image(sample)],
        "prompt": prompt_messages(sample, fmt, hint=fmt.hint_for(sample.id)),
        "completion": [_message({"role": "assistant", "content": sample.description})],
    }


def grpo_row(sample: Sample, fmt: PromptFormat = PromptFormat()) -> dict[str, Any]:
    return {
        "prompt": prompt_messages(sample, fmt),
        "image": _image(sample),
        "gold_aus": list(sample.aus),
        "gold_labels": list(sample.labels),
        "dataset": sample.dataset,
        "sample_id": sample.id,
    }


def _features(stage: Stage):
    from datasets import Features, Image, List, Value

    message = {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
    if stage == "sft":
        return Features({"images": List(Image()), "prompt": List(message), "completion": List(message)})
    return Features({"prompt": List(message), "image": Image(), "gold_aus": List(Value("string")),
                     "gold_labels": List(Value("string")), "dataset": Value("string"), "sample_id": Value("string")})


# ---------------------------------------------------------------- streams
def check_sources(sources: Sequence[DataSource]) -> None:
    """Settings that only a synthesis output can honour (ValueError otherwise), and one followed source at most
    (the trainer reads the others whole first)."""
    from trainer.partitions import is_synthesis_output

    for source in sources:
        asks = [name for name, on in (("format: wds", source.format == "wds"),
                                      ("partitions", source.partitions is not None), ("follow", source.follow)) if on]
        if asks and not is_synthesis_output(source.uri):
            raise ValueError(f"{redact(source.uri)}: {', '.join(asks)} needs a synthesis output (commits/*.json)")
    if sum(source.follow for source in sources) > 1:
        raise ValueError("follow one synthesis output at most (the other sources are read whole first): with "
                         "--follow, give a single --data synthesis output, or list the sources in the config")


def source_samples(source: DataSource, stats: SourceStats) -> Iterator[Sample]:
    """A source's usable samples; a synthesis output is read partition by partition (noted in `stats`)."""
    from engine.data.dataset import iter_samples
    from trainer.partitions import committed_partitions, is_synthesis_output, partition_id, partition_samples

    if not is_synthesis_output(source.uri):
        yield from iter_samples(source.uri)
        return
    seen_ids: set[str] = set()
    for commit in committed_partitions(source.uri, source.partitions):
        yield from partition_samples(source.uri, commit, source.format, seen_ids)
        stats.partition_read(partition_id(commit.partition))


def usable(sample: Sample, stage: Stage, stats: SourceStats) -> bool:
    """False for an SFT sample without a description (counted in `stats`)."""
    if stage == "sft" and not sample.description.strip():
        if not stats.skipped_no_description:
            log.warning("%s: SFT skips samples without a description (first: %s); the run summary counts them",
                        redact(stats.uri), sample.id)
        stats.skipped_no_description.add(sample.id)
        return False
    stats.rows.add(sample.id)
    return True


def training_row(sample: Sample, stage: Stage, fmt: PromptFormat) -> dict[str, Any]:
    return sft_row(sample, fmt) if stage == "sft" else grpo_row(sample, fmt)


def _rows(source: DataSource, stage: Stage, stats: SourceStats,
          fmt: PromptFormat = PromptFormat()) -> Iterator[dict[str, Any]]:
    yielded = 0
    for sample in source_samples(source, stats):
        if usable(sample, stage, stats):
            yielded += 1
            yield training_row(sample, stage, fmt)
    if not yielded:  # an empty source would otherwise surface as an opaque error deep inside the trainer
        raise ValueError(f"{redact(source.uri)}: no usable {stage.upper()} rows ({len(stats.skipped_no_description)} "
                         "without a description; unusable records are logged by engine.data.dataset)")


def stream(generate, stage: Stage):
    from datasets import IterableDataset

    # A closure, not gen_kwargs: datasets would treat a list-valued kwarg as shards to split.
    return IterableDataset.from_generator(generate, features=_features(stage))


def _source_stream(source: DataSource, stage: Stage, stats: SourceStats, fmt: PromptFormat):
    return stream(lambda: _rows(source, stage, stats, fmt), stage)


def mixing_probabilities(sources: Sequence[DataSource]) -> list[float]:
    total = sum(source.weight for source in sources)
    return [source.weight / total for source in sources]


def build_dataset(sources: Sequence[DataSource], stage: Stage, *, seed: int = 0,
                  stopping: Literal["all_exhausted", "first_exhausted"] = "all_exhausted",
                  shuffle_buffer: int = 0, fmt: PromptFormat = PromptFormat()):
    """One streamed dataset over all sources (weighted mix); returns (dataset, stats)."""
    from datasets import interleave_datasets

    if not sources:
        raise ValueError("no training data: give at least one source (--data URI)")
    check_sources(sources)
    if any(source.follow for source in sources):  # trainer.follow reads a followed training source
        raise ValueError("follow applies to the training data only, not to eval_data")
    stats = DataStats([SourceStats(source.uri) for source in sources])
    streams = [_source_stream(source, stage, s, fmt) for source, s in zip(sources, stats.sources)]
    dataset = streams[0] if len(streams) == 1 else interleave_datasets(
        streams, probabilities=mixing_probabilities(sources), seed=seed, stopping_strategy=stopping)
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return dataset, stats


def count_rows(sources: Sequence[DataSource], stage: Stage) -> int:
    """Rows one pass over every source yields (one read of the data; only needed to size a run in epochs)."""
    stats = DataStats([SourceStats(source.uri) for source in sources])
    for source, s in zip(sources, stats.sources):
        for _ in _rows(source, stage, s):
            pass
    return stats.as_dict()["rows"]


def steps_for_epochs(rows: int, epochs: float, rows_per_step: int) -> int:
    return max(1, math.ceil(rows * epochs / rows_per_step))

