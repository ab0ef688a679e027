"""`fea split`: one labelled dataset -> OUT/seed, OUT/pool and OUT/test (canonical datasets) and
OUT/split.json.

- test: `test_fraction` of each stratum, records kept whole (their descriptions are the ROUGE
  references);
- seed: `seed_size` records in all (spread over the strata in proportion to their size) or
  `seed_fraction` of each stratum, drawn only from records that have reasoning (a description): the
  seed set is what SFT learns the reasoning from;
- pool: everything else, with labels and AUs but no reasoning (synthesis writes it).

Strata are the combinations of the `stratify` keys: "dataset" (the source) and "labels" (the first
label; "" when the emotion is unknown). Within a stratum records are ordered by sha256(seed, id), so
the same seed gives the same split whatever the input order, and a record's split does not depend on
which other records are present in other strata.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from typing import Any, Iterator

from engine.core.types import Sample
from engine.data import storage
from engine.data.dataset import iter_samples, write_samples

SPLITS = ("seed", "pool", "test")
STRATA_KEYS = ("dataset", "labels")


def _stratum(sample: Sample, keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sample.dataset if key == "dataset" else (sample.labels[0] if sample.labels else "") for key in keys)


def _order(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{sample_id}".encode()).hexdigest()


def _quotas(sizes: dict[Any, int], total: int) -> dict[Any, int]:
    """`total` spread over strata in proportion to `sizes` (largest remainder; ties by stratum)."""
    whole = sum(sizes.values())
    if whole == 0:
        return dict.fromkeys(sizes, 0)
    exact = {key: total * size / whole for key, size in sizes.items()}
    quota = {key: int(value) for key, value in exact.items()}
    left = total - sum(quota.values())
    for key in sorted(exact, key=lambda k: (quota[k] - exact[k], str(k)))[:left]:
        quota[key] += 1
    return quota


def assign(records: list[tuple[str, tuple[str, ...], bool]], *, seed_size: int | None, seed_fraction: float | None,
           test_fraction: float, seed: int) -> dict[str, str]:
    """(id, stratum, has reasoning) -> {id: split}."""
    strata: dict[tuple[str, ...], list[tuple[str, bool]]] = defaultdict(list)
    for sample_id, stratum, reasoned in records:
        strata[stratum].append((sample_id, reasoned))
    split: dict[str, str] = {}
    rest: dict[tuple[str, ...], list[tuple[str, bool]]] = {}
    for stratum, members in strata.items():
        members.sort(key=lambda m: _order(seed, m[0]))
        n_test = round(len(members) * test_fraction)
        split.update((sample_id, "test") for sample_id, _ in members[:n_test])
        rest[stratum] = members[n_test:]
    candidates = {stratum: [m for m in members if m[1]] for stratum, members in rest.items()}
    if seed_size is not None:
        quota = _quotas({s: len(c) for s, c in candidates.items()}, min(seed_size, sum(map(len, candidates.values()))))
    else:
        quota = {s: round(len(rest[s]) * (seed_fraction or 0.0)) for s in rest}
    for stratum, members in rest.items():
        chosen = {sample_id for sample_id, _ in candidates[stratum][:quota[stratum]]}
        split.update((sample_id, "seed" if sample_id in chosen else "pool") for sample_id, _ in members)
    return split


def _routed(input_uri: str, split: dict[str, str], name: str, counts: dict[str, Counter]) -> Iterator[Sample]:
    for sample in iter_samples(input_uri):
        if split.get(sample.id) != name:
            continue
        counts["dataset"][sample.dataset] += 1
        counts["label"][sample.labels[0] if sample.labels else "(unknown)"] += 1
        yield dataclasses.replace(sample, description="") if name == "pool" else sample


def split_dataset(input_uri: str, out_uri: str, *, seed_size: int | None = None, seed_fraction: float | None = None,
                  test_fraction: float = 0.1, stratify: tuple[str, ...] = STRATA_KEYS, seed: int = 0) -> dict[str, Any]:
    """Write OUT/seed, OUT/pool, OUT/test and OUT/split.json (counts per split, source and label)."""
    if (seed_size is None) == (seed_fraction is None):
        raise ValueError("give exactly one of seed_size and seed_fraction")
    if not 0.0 <= test_fraction < 1.0 or not 0.0 <= (seed_fraction or 0.0) <= 1.0 or (seed_size or 0) < 0:
        raise ValueError("test_fraction must be in [0, 1), seed_fraction in [0, 1] and seed_size >= 0")
    unknown = set(stratify) - set(STRATA_KEYS)
    if unknown:
        raise ValueError(f"stratify by {sorted(unknown)}: only {', '.join(STRATA_KEYS)} are known")
    keys = tuple(stratify)
    records = [(s.id, _stratum(s, keys), bool(s.description.strip())) for s in iter_samples(input_uri)]
    split = assign(records, seed_size=seed_size, seed_fraction=seed_fraction, test_fraction=test_fraction, seed=seed)
    out_uri = str(out_uri).rstrip("/")
    report: dict[str, Any] = {"input": storage.redact(input_uri), "seed": seed, "seed_size": seed_size,
                              "seed_fraction": seed_fraction, "test_fraction": test_fraction, "stratify": list(keys),
                              "splits": {}}
    for name in SPLITS:
        counts: dict[str, Counter] = {"dataset": Counter(), "label": Counter()}
        summary = write_samples(_routed(input_uri, split, name, counts), storage.join(out_uri, name), split=name)
        report["splits"][name] = {"n": summary["imported"], "uri": storage.redact(storage.join(out_uri, name)),
                                  "by_source": dict(sorted(counts["dataset"].items())),
                                  "by_label": dict(sorted(counts["label"].items()))}
    if seed_size is not None and report["splits"]["seed"]["n"] < seed_size:
        report["seed_short"] = f"{seed_size} asked, {report['splits']['seed']['n']} records with reasoning available"
    storage.write_json(storage.join(out_uri, "split.json"), report)
    return report
