"""The run report across rounds: Markdown with PNG plots, from the step records only (honest numbers)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from trainer import report
from engine.data import storage
from engine.core.config import LoopConfig

STEPS = ("sft_seed", "grpo", "synth", "retrain", "eval")


def _retries_per_accepted(synth_out: str) -> float | None:
    from engine.data.shards import committed_shard_uris, iter_parquet_rows

    attempts = [row["provenance"]["attempts"] for uri in committed_shard_uris(synth_out, "accepted", "parquet")
                for row in iter_parquet_rows(uri, columns=["provenance"])]  # images stay unread
    return sum(a - 1 for a in attempts) / len(attempts) if attempts else None


def round_row(state) -> dict[str, Any]:
    """One round's numbers: synthesis yield and cost, held-out metrics, data size, seconds per step."""
    synth = state.steps["synth"]["summary"]
    finished = synth["accepted"] + synth["rejected"]
    overall = state.steps["eval"]["metrics"]["overall"]
    return {
        "round": state.index,
        "synth_inputs": synth["inputs"], "accepted": synth["accepted"], "rejected": synth["rejected"],
        "quarantined": synth["quarantined"],
        "acceptance_rate": synth["accepted"] / finished if finished else None,
        "retries_per_accepted": _retries_per_accepted(state.steps["synth"]["out"]),
        "emotion_accuracy": overall["emotion_accuracy"], "au_macro_f1": overall["au_macro_f1"],
        "rouge_l_f": overall["rouge_l_f"], "format_rate": overall["format_rate"],
        "train_rows": state.steps["retrain"]["train"]["data"]["rows"],
        "seconds": {step: state.steps[step]["seconds"] for step in STEPS if step in state.steps},
    }


def write_run_report(cfg: LoopConfig, rounds: Sequence, stop_reason: str | None = None) -> str:
    """OUT/report.md and OUT/plots/*.png; written locally, then copied when OUT is on S3."""
    rows = [round_row(state) for state in rounds]
    local = Path(cfg.out) if not storage.is_s3(cfg.out) else Path(tempfile.mkdtemp(prefix="fea-report-"))
    plots = local / "plots"
    x = [r["round"] for r in rows]
    files = [
        report.plot_lines(x, {"acceptance rate": [r["acceptance_rate"] for r in rows],
                              "emotion accuracy": [r["emotion_accuracy"] for r in rows],
                              "AU F1 (macro)": [r["au_macro_f1"] for r in rows],
                              "ROUGE-L F": [r["rouge_l_f"] for r in rows]},
                          plots / "quality.png", "Synthesis yield and held-out quality per round", "round", "value"),
        report.plot_lines(x, {"retries per accepted sample": [r["retries_per_accepted"] for r in rows]},
                          plots / "retries.png", "Retries per accepted sample", "round", "retries"),
        report.plot_lines(x, {"training rows": [r["train_rows"] for r in rows]},
                          plots / "data_size.png", "Training data per round", "round", "rows"),
        report.plot_lines(x, {step: [r["seconds"].get(step) for r in rows] for step in STEPS},
                          plots / "stage_seconds.png", "Time per stage", "round", "seconds"),
    ]
    quality = report.markdown_table(
        ["round", "synth inputs", "accepted", "rejected", "quarantined", "acceptance", "retries/accepted",
         "emotion acc", "AU F1 macro", "ROUGE-L F", "format", "train rows"],
        [[r["round"], r["synth_inputs"], r["accepted"], r["rejected"], r["quarantined"], r["acceptance_rate"],
          r["retries_per_accepted"], r["emotion_accuracy"], r["au_macro_f1"], r["rouge_l_f"], r["format_rate"],
          r["train_rows"]] for r in rows])
    timing = report.markdown_table(["round", *STEPS], [[r["round"], *(r["seconds"].get(s) for s in STEPS)] for r in rows])
    sections = [
        ("Run", report.markdown_table(["out", "base model", "rounds run", "score", "stopped because"],
                                      [[storage.redact(cfg.out), storage.redact(cfg.base_model.path), len(rows),
                                        cfg.score, stop_reason or "running"]])),
        ("Rounds", quality + "\n\nEvery number is measured in this run: synthesis counts come from the "
         "committed partitions, quality from the held-out evaluation of each round's retrained model."),
        ("Seconds per stage", timing),
        ("Plots", "\n\n".join(report.image_link(f, local, f.stem) for f in files)),
    ]
    path = report.write_markdown(local / "report.md", "Facial-R1 self-improvement run", sections)
    if storage.is_s3(cfg.out):
        storage.upload_dir(local, cfg.out)
        return storage.join(cfg.out, "report.md")
    return str(path)
