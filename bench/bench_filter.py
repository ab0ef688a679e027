"""Filter throughput (item 4): verifications per second on one core, engine.core.verifier.verify_batch,
for ~300-token completions, strict and paper policies.

The mix is what a synthesis run sees: completions that pass, and the usual failures (wrong label, an
extra AU, a forbidden word, a completion cut at max tokens without its tags, free-running text of a
young model). Each completion is grown to about 1,200 characters, i.e. ~300 tokens of English for
Qwen's tokenizer (~4 characters a token). CPU time (time.process_time) of this single-threaded
process is measured, so other load on the machine does not count against it.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

TARGET_CHARS = 1200
TARGET_PER_S = 10_000
FILLER_WORDS = ("the face shows a clear pattern of movement around the eyes and mouth while the lighting stays "
                "even across the forehead and cheeks so each feature reads plainly").split()


def _grow(think: str, rng: random.Random) -> str:
    """The think text repeated (same AU mentions) until the completion is ~TARGET_CHARS long."""
    parts = [think]
    while sum(map(len, parts)) < TARGET_CHARS - 60:
        parts.append(" ".join(rng.sample(FILLER_WORDS, 12)) + ".")
        parts.append(think)
    return " ".join(parts)[:TARGET_CHARS - 40]


def completions(samples, rng: random.Random) -> list[tuple[str, tuple[str, ...], tuple[str, ...], str]]:
    """(completion, gold AUs, gold labels, kind) in a fixed mix: 40% that pass, 60% failures."""
    from engine.core.facs import EMOTIONS

    items = []
    kinds = ("accepted", "accepted", "accepted", "accepted", "wrong_label", "extra_au", "forbidden_word",
             "truncated", "free_text", "free_text")
    for i, sample in enumerate(samples):
        think = sample.description.split("<think>", 1)[1].split("</think>", 1)[0]
        label = sample.labels[0]
        kind = kinds[i % len(kinds)]
        grown = _grow(think, rng)
        if kind == "accepted":
            text = f"<think>{grown}</think>\n<answer>{label}</answer>"
        elif kind == "wrong_label":
            other = next(e for e in EMOTIONS if e != label)
            text = f"<think>{grown}</think>\n<answer>{other}</answer>"
        elif kind == "extra_au":
            text = f"<think>{grown} The nose is wrinkled (AU9).</think>\n<answer>{label}</answer>"
        elif kind == "forbidden_word":
            text = f"<think>{grown} The jaw is not dropped.</think>\n<answer>{label}</answer>"
        elif kind == "truncated":  # max tokens reached mid-think
            text = f"<think>{grown}{grown}"[:TARGET_CHARS]
        else:  # a young model's free-running text with stray tags and ids
            words = [rng.choice(FILLER_WORDS + ["AU12", "<think>", "au4", "happy", "(AU6)", "answer"])
                     for _ in range(240)]
            text = " ".join(words)[:TARGET_CHARS]
        items.append((text, sample.aus, sample.labels, kind))
    return items


def measure(items, cfg, repeats: int) -> tuple[float, int]:
    """Best-of-`repeats` CPU seconds for one verify_batch over all items, and the accepted count."""
    from engine.core.verifier import verify_batch

    best = float("inf")
    accepted = 0
    for _ in range(repeats):
        t0 = time.process_time()
        verdicts = verify_batch(items, cfg)
        best = min(best, time.process_time() - t0)
        accepted = sum(v.accepted for v in verdicts)
    return best, accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from engine.core.config import VerifierConfig
    from engine.core.facs import label_set_for
    from engine.core.verifier import VerifyItem

    info = common.machine()
    samples = common.load_samples(common.face_set(200))
    rng = random.Random(0)
    base = completions(samples, rng)
    mix = [base[i % len(base)] for i in range(args.items)]
    items = [VerifyItem(text, aus, labels, f"s{i}", 0, label_set_for("SynthFaces"))
             for i, (text, aus, labels, _) in enumerate(mix)]
    mean_chars = sum(len(t) for t, *_ in mix) / len(mix)
    rows, ratios = [], []
    for policy in ("strict", "paper"):
        seconds, accepted = measure(items, VerifierConfig(policy=policy), args.repeats)
        rate = len(items) / seconds
        rows.append({"policy": policy, "items": len(items), "accepted": accepted, "mean_chars": round(mean_chars),
                     "cpu_seconds": seconds, "verifications_per_s": rate, "us_per_item": 1e6 * seconds / len(items)})
        ratios.append(common.ratio_row(f"{policy}: verifications/s on one core vs target", rate, TARGET_PER_S,
                                       ">= 1.0 (10,000/s)", rate >= TARGET_PER_S))
    common.print_table("filter", rows)
    common.print_table("vs target", ratios)
    notes = [f"Mix per 10 completions: 4 that pass strict, 1 wrong label, 1 extra AU, 1 forbidden word, "
             f"1 cut at max tokens (no closing tags), 2 free-running texts; ~{TARGET_CHARS} characters each "
             f"(~300 Qwen tokens). Gold from {len(samples)} synthetic faces. Best of {args.repeats} passes of "
             f"verify_batch, CPU time of this single thread (time.process_time)."]
    if not args.no_record:
        common.record_run("filter throughput (item 4)", common.command_line(), info, rows, ratios, notes)


if __name__ == "__main__":
    main()
