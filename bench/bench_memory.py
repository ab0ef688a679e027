"""Read bandwidth of one core against the size of what it reads, one process alone and two at once:
where the CPU's cache stops serving, which guides the hf backend's `generation.decode_cache_mb`.

Every hf decode step reads the whole KV of its batch (keys and values of every row and layer), so a
batch whose KV outgrows the cache reads it from memory on every step. Here a torch sum (one thread)
reads a float32 buffer of each size repeatedly; in the pair case two processes do it at the same
time, as two generator actors do.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

SIZES_MB = (16, 32, 48, 64, 80, 96, 128, 256)
READ_MB = 4096  # bytes read per size and process, so each size takes about the same time


def read_bandwidth(sizes_mb, barrier=None) -> dict[int, float]:
    """GiB/s of a one-thread torch sum over a float32 buffer of each size (best of three passes)."""
    import torch

    torch.set_num_threads(1)
    result = {}
    for size in sizes_mb:
        buffer = torch.ones(size * 2**20 // 4)
        buffer.sum()  # touch every page before timing
        repeats = max(3, READ_MB // size)
        if barrier is not None:
            barrier.wait()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                buffer.sum()
            best = min(best, (time.perf_counter() - start) / repeats)
        result[size] = size / 1024 / best
    return result


def _pair_worker(sizes_mb, barrier, queue) -> None:
    queue.put(read_bandwidth(sizes_mb, barrier))


def read_bandwidth_pair(sizes_mb) -> list[dict[int, float]]:
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_pair_worker, args=(sizes_mb, barrier, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true", help="print only; record nothing")
    args = parser.parse_args()
    info = common.machine()
    alone = read_bandwidth(SIZES_MB)
    pair = read_bandwidth_pair(SIZES_MB)
    rows = [{"buffer_mb": size, "alone_gib_s": round(alone[size], 1),
             "pair_gib_s_each": f"{pair[0][size]:.1f} / {pair[1][size]:.1f}"} for size in SIZES_MB]
    common.print_table("read bandwidth", rows)
    fastest = max(alone.values())
    ratios = [common.ratio_row(f"alone, {size} MiB vs fastest size", round(alone[size], 1), round(fastest, 1), "-")
              for size in (48, 128)]
    notes = ["One torch thread per process summing a float32 buffer (best of three passes of ~4 GiB each). "
             "Where the rate halves, reads come from memory instead of the CPU's cache. The hf backend bounds "
             "a decode batch's KV below that size (generation.decode_cache_mb); with two generators the "
             "cache is shared."]
    if not args.no_record:
        common.record_run("read bandwidth against buffer size (sets generation.decode_cache_mb)",
                            common.command_line(), info, rows, ratios, notes)


if __name__ == "__main__":
    main()
