"""Run every CPU benchmark in turn (`make bench`); each records its run in bench/results and renders BENCHMARKS.md.

bench/gpu_device.py is not run here: it is meant for a GPU machine (see its docstring).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = (
    ["bench/bench_filter.py"],
    ["bench/bench_writer.py"],
    ["bench/bench_pipeline.py"],
    ["bench/bench_synth.py", "--part", "throughput"],
    ["bench/bench_synth.py", "--part", "efficiency"],
    ["bench/bench_synth.py", "--part", "scaling"],
    ["bench/bench_synth.py", "--part", "anatomy"],
    ["bench/bench_memory.py"],
    ["bench/bench_train.py"],
)


def main() -> int:
    failed = []
    for args in BENCHMARKS:
        print(f"\n=== {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, *args], cwd=REPO).returncode != 0:
            failed.append(" ".join(args))
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
