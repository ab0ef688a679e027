"""The partition writer on a disk that fills up: a real tmpfs, mounted in a private mount namespace.

Run as `unshare -rm python -m tests.support.full_disk MOUNTPOINT`; it prints one JSON object with what
each phase saw. Phases: (1) the disk is too small for the shards; (2) it holds the shards exactly, so
the commit write is the one that fails; each time the disk is then enlarged (remount) and the same
partition is written again, as the rerun of a job would.
"""
from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from engine.core.config import VerifierConfig
from engine.core.types import Attempt, Sample, sha256_hex
from engine.data.commits import commit_uri, read_commits, resolve_shard_uri
from engine.data import storage
from engine.synth.judge import Gold, judge
from engine.synth.partition import Outcome, PartitionResult, cut_partitions, write_partition

GOOD = ("<think>The inner brows are raised (AU1) and the brows are lowered (AU4), the lip corners are "
        "pulled down (AU15), a downcast look typical of sadness.</think><answer>sadness</answer>")
BAD = "<think>A face.</think><answer>happiness</answer>"
GOLD = Gold(("AU1", "AU4", "AU15"), ("sadness",), None)
PAGE = 4096


def noisy_sample(i: int) -> Sample:
    pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = buffer.getvalue()
    return Sample(id=f"s{i}", dataset="SynthFaces", image=image, image_sha256=sha256_hex(image),
                  image_path=f"images/s{i}.png", question="What is the emotion of this face?",
                  aus=GOLD.aus, labels=GOLD.labels)


def finished_partition() -> PartitionResult:
    partition = next(cut_partitions([noisy_sample(i) for i in range(8)], 8))
    outcomes = []
    for s in partition.samples:
        completion = GOOD if int(s.id[1:]) % 2 else BAD
        attempt = Attempt(sample_id=s.id, attempt=0, backend="replay", model_id="m", prompt_hash="h",
                          completion=completion, completion_tokens=len(completion.split()))
        outcome = Outcome(s)
        outcome.record(judge([[attempt]], [GOLD], VerifierConfig())[0])
        outcomes.append(outcome)
    return PartitionResult("job-full-disk", partition, outcomes)


def mount(mountpoint: str, size: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mountpoint], check=True)


def used_bytes(mountpoint: str) -> int:
    stat = os.statvfs(mountpoint)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def try_write(out: str, result: PartitionResult) -> dict:
    try:
        write_partition(out, result)
        return {"error": None}
    except OSError as err:
        return {"error": errno.errorcode.get(err.errno, str(err.errno))}


def state(out: str) -> dict:
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names)
    commits = read_commits(out)
    intact = all(sha256_hex(storage.read_bytes(resolve_shard_uri(out, s.uri))) == s.sha256
                 for c in commits for s in c.shards)
    return {"files": files, "commits": len(commits), "inputs": sum(c.inputs for c in commits), "intact": intact}


def phase(mountpoint: str, name: str, size: int, result: PartitionResult) -> dict:
    out = os.path.join(mountpoint, name)
    mount(mountpoint, size, remount=True)
    report = {"small": try_write(out, result), "after_failure": state(out)}
    mount(mountpoint, 16 << 20, remount=True)
    report["rerun"] = try_write(out, result)
    report["after_rerun"] = state(out)
    subprocess.run(["rm", "-rf", out], check=True)  # room for the next phase
    return report


def main(mountpoint: str) -> None:
    result = finished_partition()
    mount(mountpoint, 16 << 20)
    write_partition(os.path.join(mountpoint, "dry"), result)  # how much room the shards take
    os.remove(commit_uri(os.path.join(mountpoint, "dry"), 0))
    shards_bytes = used_bytes(mountpoint)
    subprocess.run(["rm", "-rf", os.path.join(mountpoint, "dry")], check=True)
    report = {"shards_bytes": shards_bytes,
              "during_shards": phase(mountpoint, "a", PAGE * 4, result),
              "during_commit": phase(mountpoint, "b", shards_bytes, result)}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
