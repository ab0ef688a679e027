"""The run report across rounds: Markdown with PNG plots, from the step records and the evaluated
stages only (honest numbers), and the run summary's stage figures with 95% bootstrap intervals."""
from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import report
from engine.data import storage
from engine.core.config import LoopConfig
from engine.loop.stage_stats import load_predictions, metrics_with_intervals

STEPS = ("sft_seed", "grpo", "synth", "retrain", "eval")
CONTROL = "control"
RESAMPLES = 1000  # bootstrap resamples per stage, in the report and the summary alike
COLORS = {"stage": "tab:blue", "final": "tab:green", CONTROL: "tab:orange"}


@dataclass(frozen=True)
class StageEval:
    """One evaluated model: `eval_dir` is a folder written by trainer.eval.run_eval."""

    name: str  # "base", "sft_seed", "grpo-00", "retrain-00", ..., or "control"
    round: int | None  # None for base, sft_seed and control
    eval_dir: str
    model: str


# ---------------------------------------------------------------- the summary
def stage_row(stage: StageEval, *, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """The stage's held-out figures from its predictions.jsonl, each with its 95% bootstrap interval;
    MetricsMismatch if they disagree with what evaluation computed."""
    figures = metrics_with_intervals(stage.eval_dir, resamples=resamples, seed=seed)
    return {"name": stage.name, "round": stage.round, **figures, "model": storage.redact(stage.model)}


def synthesis_row(round_index: int, summary: Mapping[str, Any]) -> dict[str, Any]:
    """A round's synthesis counts; acceptance = accepted / inputs that were not quarantined."""
    attempted = summary["inputs"] - summary.get("quarantined", 0)
    return {"round": round_index, "inputs": summary["inputs"], "accepted": summary["accepted"],
            "acceptance": summary["accepted"] / attempted if attempted else None}


def synthesis_rows_from_rounds(rounds: Sequence) -> list[dict[str, Any]]:
    return [synthesis_row(state.index, state.steps["synth"]["summary"]) for state in rounds
            if "synth" in state.steps]


def _stage_rows(stages: Sequence[StageEval], resamples: int, seed: int) -> tuple[list[dict], dict | None]:
    rows = [stage_row(s, resamples=resamples, seed=seed) for s in stages if s.name != CONTROL]
    control = [stage_row(s, resamples=resamples, seed=seed) for s in stages if s.name == CONTROL]
    return rows, (control[-1] if control else None)


def summary_from_rows(rows: Sequence[dict], control: dict | None, synthesis: Sequence[Mapping[str, Any]], *,
                      test_n: int, wall_seconds: float, existing: Mapping[str, Any]) -> dict[str, Any]:
    return {**existing, "test_n": test_n, "wall_seconds": round(float(wall_seconds), 3), "stages": list(rows),
            "control": control, "final": rows[-1] if rows else None,
            "synthesis": [synthesis_row(s["round"], s) for s in synthesis]}


def build_summary(stages: Sequence[StageEval], synthesis: Sequence[Mapping[str, Any]], *, test_n: int,
                  wall_seconds: float, existing: Mapping[str, Any], resamples: int = RESAMPLES,
                  seed: int = 0) -> dict[str, Any]:
    """summary.json's figures: every stage but the control arm in order, the control arm, the final
    (last) stage, and per round the synthesis counts (items with round, inputs, accepted and
    optionally quarantined); `existing` keys are kept unless these replace them."""
    rows, control = _stage_rows(stages, resamples, seed)
    return summary_from_rows(rows, control, synthesis, test_n=test_n, wall_seconds=wall_seconds, existing=existing)


# ---------------------------------------------------------------- per round (step records)
def _retries_per_accepted(synth_out: str) -> float | None:
    from engine.data.commits import committed_shard_uris
    from engine.data.shards import iter_parquet_rows

    attempts = [row["provenance"]["attempts"] for uri in committed_shard_uris(synth_out, "accepted", "parquet")
                for row in iter_parquet_rows(uri, columns=["provenance"])]  # images stay unread
    return sum(a - 1 for a in attempts) / len(attempts) if attempts else None


def round_row(state) -> dict[str, Any]:
    """One round's numbers: synthesis yield and cost, held-out metrics, data size, seconds per step
    (None where the round has no such step)."""
    steps = state.steps
    synth = steps.get("synth", {}).get("summary") or {}
    finished = synth.get("accepted", 0) + synth.get("rejected", 0)
    overall = (steps.get("eval", {}).get("metrics") or {}).get("overall") or {}
    return {
        "round": state.index,
        "synth_inputs": synth.get("inputs"), "accepted": synth.get("accepted"), "rejected": synth.get("rejected"),
        "quarantined": synth.get("quarantined"),
        "acceptance_rate": synth["accepted"] / finished if finished else None,
        "retries_per_accepted": _retries_per_accepted(steps["synth"]["out"]) if synth else None,
        "emotion_accuracy": overall.get("emotion_accuracy"), "au_macro_f1": overall.get("au_macro_f1"),
        "rouge_l_f": overall.get("rouge_l_f"), "format_rate": overall.get("format_rate"),
        "train_rows": ((steps.get("retrain", {}).get("train") or {}).get("data") or {}).get("rows"),
        "seconds": {step: steps[step]["seconds"] for step in STEPS if step in steps},
    }


def _round_plots(rows: Sequence[dict], plots: Path) -> list[Path]:
    x = [r["round"] for r in rows]
    return [
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


def _rounds_table(rows: Sequence[dict]) -> str:
    return report.markdown_table(
        ["round", "synth inputs", "accepted", "rejected", "quarantined", "acceptance", "retries/accepted",
         "emotion acc", "AU F1 macro", "ROUGE-L F", "format", "train rows"],
        [[r["round"], r["synth_inputs"], r["accepted"], r["rejected"], r["quarantined"], r["acceptance_rate"],
          r["retries_per_accepted"], r["emotion_accuracy"], r["au_macro_f1"], r["rouge_l_f"], r["format_rate"],
          r["train_rows"]] for r in rows])


# ---------------------------------------------------------------- per stage (evaluated models)
def with_interval(value: float | None, interval: Sequence[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def _stage_table(rows: Sequence[dict], control: dict | None) -> str:
    shown = [*rows, *([control] if control else [])]
    return report.markdown_table(
        ["stage", "round", "n", "emotion acc [95% CI]", "AU F1 macro [95% CI]", "AU F1 micro [95% CI]",
         "format rate [95% CI]"],
        [[r["name"], r["round"], r["n"], *(with_interval(r[m], r[f"{m}_ci95"]) for m in
                                           ("emotion_accuracy", "au_macro_f1", "au_micro_f1", "format_rate"))]
         for r in shown])


def overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    return None if not a or not b else a[0] <= b[1] and b[0] <= a[1]


def control_comparison(final: dict | None, control: dict | None) -> str:
    """One sentence: the final model against the control arm on emotion accuracy, as measured."""
    if not final or not control or final["emotion_accuracy"] is None or control["emotion_accuracy"] is None:
        return "No control arm was evaluated in this run." if not control else ""
    points = 100 * (final["emotion_accuracy"] - control["emotion_accuracy"])
    overlaps = overlap(final["emotion_accuracy_ci95"], control["emotion_accuracy_ci95"])
    said = {True: "overlap", False: "do not overlap", None: "cannot be compared"}[overlaps]
    return (f"Final model ({final['name']}) vs control arm: emotion accuracy {final['emotion_accuracy']:.3f} vs "
            f"{control['emotion_accuracy']:.3f}, {points:+.1f} points; their 95% intervals {said}.")


def _stage_plots(rows: Sequence[dict], control: dict | None, plots: Path) -> list[Path]:
    """Accuracy and AU F1 per stage with 95% intervals; the control arm beside the final model."""
    shown = [*rows, *([control] if control else [])]
    colors = {r["name"]: COLORS["stage"] for r in rows}
    colors.update({rows[-1]["name"]: COLORS["final"]} if rows else {})
    colors.update({CONTROL: COLORS[CONTROL]} if control else {})
    files = []
    for metric, label, stem in (("emotion_accuracy", "emotion accuracy", "stage_accuracy"),
                                ("au_macro_f1", "AU F1 (macro)", "stage_au_f1")):
        files.append(report.plot_interval_bars(
            {r["name"]: r[metric] for r in shown}, {r["name"]: r[f"{metric}_ci95"] for r in shown},
            plots / f"{stem}.png", f"Held-out {label} per stage (95% CI)", label, colors=colors,
            legend={"stage": COLORS["stage"], "final model": COLORS["final"],
                    **({"control arm (seed only)": COLORS[CONTROL]} if control else {})}))
    return files


def _final_plots(final: StageEval, plots: Path) -> list[Path]:
    from trainer.metrics import compute_metrics, confusion

    data = load_predictions(final.eval_dir)
    cm = confusion(data.records, data.predictions)
    per_au = compute_metrics(data.records, data.predictions).per_au_f1
    return [report.plot_confusion_matrix(cm["matrix"], cm["rows"], cm["columns"], plots / "final_confusion.png",
                                         f"{final.name}: gold vs predicted emotion"),
            report.plot_bars(per_au, plots / "final_per_au_f1.png", f"{final.name}: F1 per AU", "F1")]


def _seconds_table(seconds_per_stage: Mapping[str, float]) -> str:
    total = sum(seconds_per_stage.values())
    return report.markdown_table(["stage", "seconds", "share"],
                                 [[name, float(s), s / total if total else None]
                                  for name, s in seconds_per_stage.items()] + [["total", float(total), 1.0]], digits=2)


def perception_line(perception: Mapping[str, Any]) -> str:
    """The base model's perception pretraining cost (seconds, faces, steps; an optional `note`)."""
    note = f" {perception['note']}" if perception.get("note") else ""
    return (f"Perception pretraining of the base model, before the loop: {float(perception['seconds']):.1f} s, "
            f"{perception['faces']} faces, {perception['steps']} steps.{note}")


def _stages_section(rows: Sequence[dict], control: dict | None) -> str:
    return (_stage_table(rows, control) + "\n\n" + control_comparison(rows[-1] if rows else None, control)
            + "\n\nHeld-out figures of every evaluated model; intervals are 95% BCa bootstrap intervals over "
            f"test records (scipy.stats.bootstrap, {RESAMPLES} resamples).")


def _gallery_sections(cfg: LoopConfig, rounds: Sequence, final: StageEval, local: Path) -> list[tuple[str, str]]:
    from engine.loop.gallery import held_out_gallery, synthesized_gallery

    last = rounds[-1] if rounds else None
    synth_out = last.steps.get("synth", {}).get("out") if last is not None else None
    return [("Gallery: held-out faces", held_out_gallery(cfg.test, load_predictions(final.eval_dir).rows, local)),
            ("Gallery: accepted synthesized samples",
             synthesized_gallery(synth_out, local, last.index if last is not None else None))]


def _stage_sections(cfg: LoopConfig, rounds: Sequence, stages: Sequence[StageEval],
                    local: Path) -> list[tuple[str, str]]:
    """The stage table with intervals, the stage plots, the final model's plots and the gallery."""
    rows, control = _stage_rows(stages, RESAMPLES, 0)
    plots = _stage_plots(rows, control, local / "plots")
    sections = [("Stages", _stages_section(rows, control)),
                ("Stage plots", "\n\n".join(report.image_link(f, local, f.stem) for f in plots))]
    evaluated = [s for s in stages if s.name != CONTROL]
    if evaluated:
        files = _final_plots(evaluated[-1], local / "plots")
        sections.append((f"Final model ({evaluated[-1].name})",
                         "\n\n".join(report.image_link(f, local, f.stem) for f in files)))
        sections += _gallery_sections(cfg, rounds, evaluated[-1], local)
    return sections


def _run_section(cfg: LoopConfig, rounds_run: int, stop_reason: str | None,
                 perception: Mapping[str, Any] | None) -> str:
    body = report.markdown_table(["out", "base model", "rounds run", "score", "stopped because"],
                                 [[storage.redact(cfg.out), storage.redact(cfg.base_model.path), rounds_run,
                                   cfg.score, stop_reason or "running"]])
    return body + ("\n\n" + perception_line(perception) if perception else "")


def _synthesis_table(synthesis: Sequence[Mapping[str, Any]]) -> str:
    return report.markdown_table(["round", "inputs", "accepted", "acceptance"],
                                 [[s["round"], s["inputs"], s["accepted"], synthesis_row(s["round"], s)["acceptance"]]
                                  for s in synthesis])


def _timing_section(rows: Sequence[dict], seconds_per_stage: Mapping[str, float] | None) -> str:
    timing = report.markdown_table(["round", *STEPS], [[r["round"], *(r["seconds"].get(s) for s in STEPS)]
                                                       for r in rows])
    return (_seconds_table(seconds_per_stage) + "\n\n" if seconds_per_stage else "") \
        + "Seconds per round and step:\n\n" + timing


def write_run_report(cfg: LoopConfig, rounds: Sequence, stop_reason: str | None = None, *,
                     stages: Sequence[StageEval] = (), synthesis_rows: Sequence[Mapping[str, Any]] | None = None,
                     perception: Mapping[str, Any] | None = None,
                     seconds_per_stage: Mapping[str, float] | None = None) -> str:
    """OUT/report.md, OUT/plots/*.png and OUT/gallery/*.png; written locally, then copied when OUT is
    on S3. Without `stages` it holds the per-round tables and plots only; `synthesis_rows` defaults
    to the rounds' synthesis counts."""
    rows = [round_row(state) for state in rounds]
    local = Path(cfg.out) if not storage.is_s3(cfg.out) else Path(tempfile.mkdtemp(prefix="fea-report-"))
    synthesis = list(synthesis_rows) if synthesis_rows is not None else synthesis_rows_from_rounds(rounds)
    round_plots = _round_plots(rows, local / "plots")
    sections = [("Run", _run_section(cfg, len(rows), stop_reason, perception)),
                *(_stage_sections(cfg, rounds, stages, local) if stages else []),
                ("Synthesis per round", _synthesis_table(synthesis)),
                ("Rounds", _rounds_table(rows) + "\n\nEvery number is measured in this run: synthesis counts "
                 "come from the committed partitions, quality from the held-out evaluation of each round's "
                 "retrained model."),
                ("Seconds per stage", _timing_section(rows, seconds_per_stage)),
                ("Plots", "\n\n".join(report.image_link(f, local, f.stem) for f in round_plots))]
    path = report.write_markdown(local / "report.md", "Facial-R1 self-improvement run", sections)
    if storage.is_s3(cfg.out):
        storage.upload_dir(local, cfg.out)
        return storage.join(cfg.out, "report.md")
    return str(path)
