"""The run console: stage lines and the summary on the terminal; metric dicts, warnings, library logs and
native writes in run.log. Each scenario runs in its own process, whose stdout and stderr are the terminal."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.loop.console import is_known_noise, summary_lines

REPO = Path(__file__).resolve().parents[2]

NOISE = {
    "pin_memory": "'pin_memory' argument is set as true but no accelerator is found, then device pinned memory "
                  "won't be used.",
    "CUDA_HOME": "No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'",
    "vLLM": "TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have version 0.11.0 installed.",
    "no length": "The used dataset had no length, returning gathered tensors. You should drop the remainder yourself.",
}
TRL_DICT = "{'loss': 0.4321, 'grad_norm': 1.25, 'learning_rate': 1e-05, 'epoch': 0.5}"


def run_script(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    prelude = textwrap.dedent(f"""
        import logging, os, sys, warnings
        from engine.loop.console import close_run_logging, print_summary, setup_run_logging, stage
        NOISE = {NOISE!r}
        logging.basicConfig(level=logging.INFO)  # a terminal handler on the root logger, as the demo has
        library = logging.getLogger("somelib")  # a library printing to stderr itself, as transformers does
        library.addHandler(logging.StreamHandler(sys.stderr))
        library.propagate = False
        console = setup_run_logging({str(tmp_path / "run")!r})
    """)
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    log = tmp_path / "run" / "run.log"
    return done, log.read_text() if log.exists() else ""


def test_a_noisy_stage_leaves_one_line_on_the_terminal_and_everything_in_the_log(tmp_path):
    done, log = run_script(tmp_path, f"""
        warnings.warn(NOISE["vLLM"])  # at import time, outside any stage
        logging.getLogger("torch.utils.cpp_extension").warning(NOISE["CUDA_HOME"])
        with stage("grpo-00") as line:
            print({TRL_DICT})
            warnings.warn(NOISE["pin_memory"])
            logging.getLogger("accelerate.accelerator").info(NOISE["no length"])
            library.warning("library chatter")
            os.write(2, b"native write on fd 2\\n")
            line.note("reward 0.75")
        with stage("retrain-00"):
            print("step 2 of 2")
        logging.getLogger("engine.loop").warning("disk almost full")
        library.error("a library error worth seeing")
        close_run_logging()
    """)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert [line.split()[:2] for line in lines[:2]] == [["1.", "grpo-00"], ["2.", "retrain-00"]]
    assert " s " in lines[0] and "reward 0.75" in lines[0]
    assert lines[0].endswith("1 dependency warning in run.log")  # the library's; known noise is not counted
    assert "warning" not in lines[1]
    assert "disk almost full" in terminal and terminal.count("a library error worth seeing") == 1
    for quiet in ["'loss': 0.4321", "step 2 of 2", "native write on fd 2", "library chatter", *NOISE.values()]:
        assert quiet not in terminal, quiet
        assert quiet in log, quiet
    assert "stage grpo-00: done in" in log and "disk almost full" in log


def test_a_failing_stage_says_so_and_the_error_reaches_the_terminal(tmp_path):
    done, log = run_script(tmp_path, """
        with stage("sft_seed"):
            print("training...")
            raise RuntimeError("out of disk")
    """)
    assert done.returncode == 1
    assert "sft_seed" in done.stderr and "failed after" in done.stderr and "out of disk" in done.stderr
    assert "Traceback" in done.stderr  # the interpreter's report, after the capture ended
    assert "training..." not in done.stderr and "training..." in log
    assert "stage sft_seed failed" in log and "RuntimeError: out of disk" in log


def test_a_stage_inside_a_stage_gets_its_line_and_the_capture_lasts_to_the_outer_end(tmp_path):
    done, log = run_script(tmp_path, """
        with stage("round 0"):
            with stage("eval"):
                print("inner output")
            print("outer output after the inner stage")
        print("after every stage")
    """)
    assert done.returncode == 0, done.stderr
    lines = [line.split()[:2] for line in done.stderr.splitlines() if line.strip()]
    assert lines == [["eval", lines[0][1]], ["1.", "round"]]  # the inner stage's line first, unnumbered
    assert "inner output" in log and "outer output after the inner stage" in log
    assert "outer output" not in done.stderr + done.stdout and "after every stage" in done.stdout


def test_a_library_logger_made_during_a_stage_is_routed_and_given_back_to_stderr(tmp_path):
    done, log = run_script(tmp_path, """
        with stage("sft_seed"):
            late = logging.getLogger("latelib")  # its handler takes sys.stderr while the stage captures it
            late.addHandler(logging.StreamHandler(sys.stderr))
            late.propagate = False
        late.warning("late chatter")
        close_run_logging()
        late.warning("printed after the run")
    """)
    assert done.returncode == 0, done.stderr
    assert "late chatter" in log and "late chatter" not in done.stderr
    assert "printed after the run" in done.stderr and "Logging error" not in done.stderr


def test_the_summary_is_printed_past_the_capture(tmp_path):
    done, _ = run_script(tmp_path, """
        row = {"name": "retrain-01", "round": 1, "emotion_accuracy": 0.7, "emotion_accuracy_ci95": [0.65, 0.75],
               "au_macro_f1": 0.6, "au_macro_f1_ci95": [0.55, 0.65]}
        with stage("report"):
            print_summary({"test_n": 300, "stages": [row], "final": row, "synthesis": [], "wall_seconds": 12.0})
    """)
    assert done.returncode == 0, done.stderr
    assert "retrain-01" in done.stderr and "0.700 [0.650, 0.750]" in done.stderr
    assert "log " + str(tmp_path / "run" / "run.log") in done.stderr


def row(name: str, accuracy: float, span: list[float]) -> dict:
    return {"name": name, "round": None, "emotion_accuracy": accuracy, "emotion_accuracy_ci95": span,
            "au_macro_f1": accuracy / 2, "au_macro_f1_ci95": [s / 2 for s in span]}


@pytest.mark.parametrize("control_span, said", [([0.30, 0.45], "do not overlap"), ([0.30, 0.62], "overlap")])
def test_summary_lines_compare_the_final_model_with_the_control(control_span, said):
    final = row("retrain-01", 0.68, [0.60, 0.75])
    summary = {"test_n": 320, "wall_seconds": 754.0, "report": "demo-out/run/report.md",
               "stages": [row("base", 0.12, [0.09, 0.16]), final], "final": final,
               "control": row("control", 0.38, control_span),
               "synthesis": [{"round": 0, "inputs": 400, "accepted": 180, "acceptance": 0.45},
                             {"round": 1, "inputs": 220, "accepted": 121, "acceptance": 0.55}]}
    text = "\n".join(summary_lines(summary))
    assert "320 faces" in text and "base" in text and "0.680 [0.600, 0.750]" in text
    assert "+30.0 points" in text and f"intervals {said}." in text
    assert "round 0 0.45 (180/400), round 1 0.55 (121/220)" in text
    assert "12:34" in text and "demo-out/run/report.md" in text


def test_known_noise_is_recognised_and_other_warnings_are_not():
    assert all(is_known_noise(message) for message in NOISE.values())
    assert not is_known_noise("CUDA out of memory. Tried to allocate 2.00 GiB")
