"""`fea watch`: new accepted samples trigger a retraining.

The watcher polls the commit records of its watched synthesis outputs. Once the accepted samples in
partitions that no earlier retraining covered reach --min-new, it claims the next trigger number
with a write-once record, OUT/triggers/NNNNN.json, naming every partition committed by then under
each prefix. It then runs `fea train sft` in a subprocess on exactly those partitions (the config's
`partitions` restriction), from the config's model: like the loop's default retraining, from the
base model on all data so far. When the model is in place it writes OUT/results/NNNNN.json.

Its state is only these records. A partition named in a trigger is not new, so a restarted watcher
never fires twice for the same data; a trigger without a result (the watcher died while training) is
trained again on its recorded partitions, resuming from its last checkpoint. Of two watchers on
one OUT exactly one wins a trigger number (the loser counts again), and a lease on the retraining's
folder lets only one of them train it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.cli import preflight
from engine.data import storage

log = logging.getLogger(__name__)

TRIGGERS, RESULTS = "triggers", "results"


@dataclass(frozen=True)
class Watch:
    data: tuple[str, ...]  # watched synthesis output prefixes, normalised (`prefix_key`)
    min_new: int
    config_path: str
    out: str  # trigger and result records; each retraining's folder (local or s3://)
    work_dir: str  # local folder that trainings write to when OUT is on S3

    def sft(self):
        from engine.core.config import SFTSection, load_config

        return load_config(SFTSection, self.config_path, section="sft")


# ---------------------------------------------------------------- records
def prefix_key(uri: str) -> str:
    """One spelling per watched prefix, so records match across restarts (relative vs absolute paths)."""
    return uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(uri)


def partition_id(partition: int) -> str:
    """A partition's id as its commit record is named and the trainer's `partitions` setting takes it."""
    from trainer.partitions import partition_id as trainer_id

    return trainer_id(partition)


def record_uri(out: str, folder: str, number: int) -> str:
    return storage.join(out, folder, f"{number:05d}.json")


def read_records(out: str, folder: str) -> dict[int, dict[str, Any]]:
    """Trigger or result records by number."""
    records = {}
    for uri in storage.list_files(storage.join(out, folder), suffix=".json"):
        stem = storage.basename(uri).removesuffix(".json")
        if stem.isdigit():
            records[int(stem)] = json.loads(storage.read_text(uri))
    return records


def covered(triggers: dict[int, dict[str, Any]]) -> dict[str, set[str]]:
    """Partition ids per prefix that some retraining already covers."""
    seen: dict[str, set[str]] = {}
    for trigger in triggers.values():
        for source in trigger["sources"]:
            seen.setdefault(source["uri"], set()).update(source["partitions"])
    return seen


# ---------------------------------------------------------------- counting
def committed(prefixes: tuple[str, ...]) -> dict[str, list]:
    """Commit records per watched prefix (a prefix nothing was committed to yet has none)."""
    from engine.data.commits import read_commits

    return {prefix: read_commits(prefix) for prefix in prefixes}


def new_accepted(commits: dict[str, list], seen: dict[str, set[str]]) -> int:
    return sum(c.accepted for prefix, found in commits.items() for c in found
               if partition_id(c.partition) not in seen.get(prefix, set()))


def source_entry(prefix: str, commits: list, seen: set[str]) -> dict[str, Any]:
    new = [c for c in commits if partition_id(c.partition) not in seen]
    return {"uri": prefix, "partitions": [partition_id(c.partition) for c in commits],
            "new_partitions": [partition_id(c.partition) for c in new],
            "accepted": sum(c.accepted for c in commits), "new_accepted": sum(c.accepted for c in new),
            "commits": [{"partition": c.partition, "job_id": c.job_id, "accepted": c.accepted,
                         "sample_ids_sha256": c.sample_ids_sha256} for c in commits]}


def train_uri(w: Watch, number: int) -> str:
    return storage.join(w.out, f"retrain-{number:05d}")


def make_trigger(w: Watch, number: int, commits: dict[str, list], seen: dict[str, set[str]]) -> dict[str, Any]:
    sources = [source_entry(prefix, found, seen.get(prefix, set())) for prefix, found in commits.items() if found]
    model = w.sft().model
    return {"trigger": number, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "min_new": w.min_new, "new_samples": sum(s["new_accepted"] for s in sources),
            "samples": sum(s["accepted"] for s in sources), "sources": sources,
            "model_from": {"path": model.path, "adapter": model.adapter}, "out": train_uri(w, number),
            "model_to": storage.join(train_uri(w, number), "merged"), "config": os.path.abspath(w.config_path),
            "watcher": {"host": socket.gethostname(), "pid": os.getpid()}}


def claim_next(w: Watch) -> dict[str, Any] | None:
    """The trigger this watcher wrote, or None while fewer than min_new new samples are committed.

    The record is write-once: when another watcher took the number first, count again against its
    record (its partitions are no longer new)."""
    while True:
        triggers = read_records(w.out, TRIGGERS)
        seen = covered(triggers)
        commits = committed(w.data)
        new = new_accepted(commits, seen)
        log.info("%d new accepted samples committed (retraining at %d)", new, w.min_new)
        if new < w.min_new:
            return None
        number = max(triggers, default=0) + 1
        trigger = make_trigger(w, number, commits, seen)
        if storage.write_once(record_uri(w.out, TRIGGERS, number), json.dumps(trigger, indent=2).encode()):
            log.info("trigger %d: %d new samples, retraining on %d in %s", number, new, trigger["samples"],
                     storage.redact(trigger["out"]))
            return trigger


def unfinished(out: str) -> list[dict[str, Any]]:
    results = read_records(out, RESULTS)
    return [t for n, t in sorted(read_records(out, TRIGGERS).items()) if n not in results]


# ---------------------------------------------------------------- retraining
def local_train_dir(w: Watch, trigger: dict[str, Any]) -> Path:
    """Where the trainer writes: the retraining's folder itself, or one under --work-dir when OUT is on S3."""
    if not storage.is_s3(trigger["out"]):
        return Path(trigger["out"])
    return Path(w.work_dir) / storage.basename(trigger["out"])


def training_sources(w: Watch, trigger: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded partitions per prefix (a prefix whose partitions accepted nothing has no rows to read);
    a prefix the config also lists keeps its weight."""
    weights = {prefix_key(s.uri): s.weight for s in w.sft().data}
    return [{"uri": s["uri"], "weight": weights.get(s["uri"], 1.0), "partitions": s["partitions"]}
            for s in trigger["sources"] if s["accepted"] > 0]


def write_training_config(w: Watch, trigger: dict[str, Any], local: Path) -> Path:
    import yaml

    cfg = w.sft()
    cfg = cfg.model_validate({**cfg.model_dump(), "data": training_sources(w, trigger), "out": str(local),
                              "round": trigger["trigger"]})
    path = local.parent / f"{local.name}.sft.yaml"  # beside the folder: the trainer owns the folder
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"sft": cfg.model_dump(mode="json")}, sort_keys=False))
    return path


def run_trainer(config: Path) -> None:
    """`fea train sft` in its own process: a long-lived watcher keeps no model or GPU memory."""
    command = [sys.executable, "-m", "engine.cli", "train", "sft", "--config", str(config), "--resume"]
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
    if finished.returncode != 0:
        raise RetrainingError(f"retraining with {config} failed (exit code {finished.returncode}); "
                              "rerun `fea watch` to resume it")


def publish(local: Path, uri: str) -> None:
    """Copy the model (merged and adapter) and the summary to the S3 folder; local folders are in place."""
    if not storage.is_s3(uri):
        return
    for name in ("merged", "adapter"):
        if (local / name).is_dir():
            storage.upload_dir(local / name, storage.join(uri, name))
    for name in ("summary.json", "checkpoint.json"):
        storage.write_bytes(storage.join(uri, name), (local / name).read_bytes())


def retrain(w: Watch, trigger: dict[str, Any]) -> dict[str, Any] | None:
    """Train one trigger to its result record; None when another watcher is training it."""
    from engine.data.lease import LeaseHeldError, OutputLease

    try:
        lease = OutputLease(trigger["out"]).acquire()
    except LeaseHeldError as err:
        log.info("trigger %d is being trained elsewhere (%s)", trigger["trigger"], err)
        return None
    with lease:
        local = local_train_dir(w, trigger)
        run_trainer(write_training_config(w, trigger, local))
        publish(local, trigger["out"])
        summary = json.loads((local / "summary.json").read_text())
        result = {"trigger": trigger["trigger"], "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "model": trigger["model_to"], "global_step": summary["global_step"],
                  "rows": summary["data"]["rows"], "sources": summary["data"]["sources"]}
        storage.write_once(record_uri(w.out, RESULTS, trigger["trigger"]), json.dumps(result, indent=2).encode())
    log.info("trigger %d: retrained model in %s", trigger["trigger"], storage.redact(trigger["model_to"]))
    return result


class RetrainingError(RuntimeError):
    """The retraining subprocess failed; its trigger stays unfinished and is resumed by the next watcher."""


# ---------------------------------------------------------------- the loop
def poll_once(w: Watch) -> dict[str, list[int]]:
    """Finish retrainings a dead watcher left, then fire if enough new samples were committed."""
    done = {"resumed": [], "fired": []}
    for trigger in unfinished(w.out):
        log.info("trigger %d has no result yet: retraining it on its recorded partitions", trigger["trigger"])
        if retrain(w, trigger) is not None:
            done["resumed"].append(trigger["trigger"])
    trigger = claim_next(w)
    if trigger is not None:
        retrain(w, trigger)
        done["fired"].append(trigger["trigger"])
    return done


def watch(w: Watch, poll: float, once: bool) -> dict[str, Any]:
    """Poll until stopped (Ctrl-C, `ray job stop`), or once with `once`; what was resumed and fired."""
    done: dict[str, list[int]] = {"resumed": [], "fired": []}
    try:
        while True:
            for key, numbers in poll_once(w).items():
                done[key] += numbers
            if once:
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        log.info("stopped")
    return {**done, "out": storage.redact(w.out), "triggers": sorted(read_records(w.out, TRIGGERS))}


# ---------------------------------------------------------------- command line
def check_watch(args: argparse.Namespace) -> Watch:
    """Flags the watcher can run on, or a one-line UsageError (exit 2)."""
    from engine.core.config import SFTSection, load_config

    preflight.check_positive(args.min_new, "--min-new")
    preflight.check_positive(args.poll, "--poll")
    preflight.check_config_file(args.config)
    for uri in args.data:
        check_watched(uri)
    cfg = load_config(SFTSection, args.config, section="sft")
    preflight.check_model(cfg.model.path, "model.path")
    out = args.out or cfg.out
    if not out:
        raise preflight.UsageError("--out (or out in the config's sft section) is required")
    preflight.check_output(out, "--out")
    work_dir = args.work_dir or default_work_dir(out)
    preflight.check_output(work_dir, "--work-dir", local_only=True)
    data = tuple(dict.fromkeys(prefix_key(uri) for uri in args.data))
    return Watch(data=data, min_new=args.min_new, config_path=args.config, out=prefix_key(out), work_dir=work_dir)


def check_watched(uri: str) -> None:
    """A watched prefix may not exist yet (synthesis has not started), but must be one that could."""
    text = preflight.check_uri(uri, "--data")
    if storage.is_s3(text):
        preflight.check_output(text, "--data")  # bucket, endpoint and credentials
    elif os.path.exists(text) and not os.path.isdir(text):
        raise preflight.UsageError(f"--data {text}: not a folder (watch synthesis output prefixes)")


def default_work_dir(out: str) -> str:
    digest = hashlib.sha256(prefix_key(out).encode()).hexdigest()[:12]
    return os.path.join(storage.default_cache_dir(), "watch", digest)


def run_watch(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    w = check_watch(args)
    print(json.dumps(watch(w, args.poll, args.once), indent=2, sort_keys=True))
    return 0


def add_watch_parser(subparsers: argparse._SubParsersAction) -> None:
    text = "Retrain (SFT) whenever enough new accepted samples are committed."
    p = subparsers.add_parser("watch", help=text, description=text, allow_abbrev=False)
    p.add_argument("--data", nargs="+", required=True, help="Synthesis output prefixes to watch (local or s3://).")
    p.add_argument("--min-new", dest="min_new", type=int, required=True,
                   help="Retrain once this many accepted samples were committed since the last retraining.")
    p.add_argument("--config", required=True, help="YAML file with a `sft:` section (the retraining's settings).")
    p.add_argument("--poll", type=float, default=60.0, help="Seconds between looks at the commit records.")
    p.add_argument("--out", help="Trigger records and retrained models (local or s3://; default: the config's out).")
    p.add_argument("--work-dir", dest="work_dir", help="Local folder for training when --out is on S3.")
    p.add_argument("--once", action="store_true", help="Look once (finishing an interrupted retraining), then exit.")
    p.set_defaults(handler=run_watch)
