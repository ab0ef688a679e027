"""`fea ...`: each subcommand parses its flags and calls one library function.

Heavy modules (torch, ray, vllm, trl) are imported inside the handlers so `fea --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from engine.cli import preflight
from engine.loop.watch import add_watch_parser

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------- data and verifier
def _score(args: argparse.Namespace) -> int:
    from engine.core.scoring import score_jsonl

    preflight.check_file(args.input, "input")
    preflight.check_output_file(args.out)

    _print_json(score_jsonl(args.input, args.out, policy=args.policy))
    return 0


def _import(args: argparse.Namespace) -> int:
    from engine.data.dataset import import_fea20k

    if args.manifest is not None:
        from engine.data.sources import import_manifest

        if args.jsonl or args.image_root:
            raise preflight.UsageError("give --manifest or --jsonl with --image-root, not both")
        preflight.check_file(args.manifest, "--manifest")
        preflight.check_output(args.out)
        _print_json(import_manifest(args.manifest, args.out))
        return 0
    preflight.check_file(args.jsonl, "--jsonl")
    preflight.check_folder(args.image_root, "--image-root")
    preflight.check_output(args.out)
    _print_json(import_fea20k(args.jsonl, args.image_root, args.out))
    return 0


def _split(args: argparse.Namespace) -> int:
    from engine.data.split import split_dataset

    preflight.check_input(args.input, "--input")
    preflight.check_output(args.out)
    stratify = tuple(key for key in (args.stratify or "").split(",") if key.strip())
    _print_json(split_dataset(args.input, args.out, seed_size=args.seed_size, seed_fraction=args.seed_fraction,
                              test_fraction=args.test_fraction, stratify=stratify, seed=args.seed))
    return 0


def _export(args: argparse.Namespace) -> int:
    from engine.data.dataset import export_committed

    preflight.check_input(args.uri, "URI")
    preflight.check_output_file(args.out)
    _print_json(export_committed(args.uri, args.out, kind="rejected" if args.rejected else "accepted"))
    return 0


def _faces(args: argparse.Namespace) -> int:
    from engine.demo.faces import write_face_set

    preflight.check_positive(args.n, "--n")
    preflight.check_output(args.out)
    _print_json(write_face_set(args.out, n=args.n, seed=args.seed))
    return 0


def _model_tiny(args: argparse.Namespace) -> int:
    from engine.demo.tinymodel import build_tiny_model

    preflight.check_output(args.out)
    print(build_tiny_model(args.out, seed=args.seed, perception_steps=args.perception_steps))
    return 0


# ---------------------------------------------------------------- synthesis
SYNTH_FLAGS = {  # flag -> dotted config key
    "input": "input", "image_root": "image_root", "out": "out", "model": "model.path", "adapter": "model.adapter",
    "backend": "generation.backend", "generators": "generators", "filters": "filters",
    "max_retries": "max_retries", "max_new_tokens": "generation.max_new_tokens", "policy": "verifier.policy",
    "partition_size": "partition_size", "batch_size": "generation.batch_size", "progress": "progress",
    "replay_path": "generation.replay_path", "job_id": "job_id",
}


def _synth(args: argparse.Namespace) -> int:
    import logging

    from engine.core.config import SynthConfig, load_config
    from engine.synth.job import run_synth

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {key: getattr(args, flag) for flag, key in SYNTH_FLAGS.items()}
    if args.no_hint:
        overrides["hint"] = False
    preflight.check_config_file(args.config)
    cfg = load_config(SynthConfig, args.config, overrides, section="synth" if args.config else None)
    preflight.check_synth(cfg)
    _print_json(run_synth(cfg, wait_for_lease=args.wait))
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="Generate, filter and commit reasoning for labelled images.")
    p.add_argument("--config", help="YAML file with a `synth:` section; flags override it.")
    p.add_argument("--input", help="Canonical Parquet dataset or FEA-20K JSONL (local or s3://).")
    p.add_argument("--image-root", dest="image_root", help="Image folder for JSONL input.")
    p.add_argument("--model", help="Model folder (local or s3://).")
    p.add_argument("--adapter", help="Optional LoRA adapter folder.")
    p.add_argument("--out", help="Output prefix (local or s3://).")
    p.add_argument("--backend", choices=["hf", "vllm", "replay"])
    p.add_argument("--replay-path", dest="replay_path", help="Stored completions for the replay backend.")
    p.add_argument("--generators", type=int)
    p.add_argument("--filters", type=int)
    p.add_argument("--max-retries", dest="max_retries", type=int)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--partition-size", dest="partition_size", type=int)
    p.add_argument("--policy", choices=["strict", "paper"])
    p.add_argument("--progress", choices=["auto", "bar", "log", "off"])
    p.add_argument("--job-id", dest="job_id")
    p.add_argument("--no-hint", action="store_true", help="Prompt without the label 'ground truth' block.")
    p.add_argument("--wait", action="store_true",
                   help="When another driver is writing --out, wait for it to finish instead of refusing.")
    p.set_defaults(handler=_synth)


# ---------------------------------------------------------------- training, evaluation, loop
def _train(args: argparse.Namespace) -> int:
    from trainer.run import run_training, training_config

    from trainer.data import check_sources

    preflight.check_config_file(args.config)
    source_flags = {"shard_format": args.format, "follow": args.follow, "follow_timeout": args.follow_timeout}
    try:
        cfg = training_config(args.stage, data=args.data, weights=args.weights, model=args.model, out=args.out,
                              config_path=args.config, max_steps=args.max_steps, **source_flags)
    except ValueError as err:  # --weights that do not fit --data (a ConfigError is a ValueError too)
        raise preflight.UsageError(str(err)) from None
    preflight.check_training(cfg)
    if any(source.follow for source in cfg.data):  # the partitions it reads and its waits are logged
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        check_sources(cfg.data)  # --format wds, partitions, --follow: synthesis outputs only
    except ValueError as err:
        raise preflight.UsageError(str(err)) from None
    _print_json(run_training(args.stage, data=args.data, model=args.model, out=args.out,
                             config_path=args.config, resume=args.resume, max_steps=args.max_steps,
                             weights=args.weights, **source_flags))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from trainer.eval import eval_config, run_eval_cli

    preflight.check_config_file(args.config)
    preflight.check_positive(args.limit, "--limit")
    preflight.check_eval(eval_config(args.data, args.model, args.out, args.backend, args.config, args.limit))
    _print_json(run_eval_cli(data=args.data, model=args.model, out=args.out, backend=args.backend,
                             config_path=args.config, limit=args.limit))
    return 0


def _loop(args: argparse.Namespace) -> int:
    from engine.core.config import LoopConfig, load_config
    from engine.loop.rounds import run_loop_from_file

    preflight.check_config_file(args.config)
    preflight.check_loop(load_config(LoopConfig, args.config, section="loop"))
    _print_json(run_loop_from_file(args.config, resume=args.resume))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from engine.demo.runner import DemoSize, run_demo

    for flag in ("seed_size", "pool", "test"):
        if getattr(args, flag) is not None:
            preflight.check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    preflight.check_config_file(args.config)
    preflight.check_output(args.out)
    given = {"seed": args.seed_size, "pool": args.pool, "test": args.test, "perception_steps": args.perception_steps}
    size = DemoSize(**{field: value for field, value in given.items() if value is not None})  # unset: DemoSize's
    summary = run_demo(args.out, size, **({"config_path": args.config} if args.config else {}))
    print(f"demo finished; report: {summary['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fea", description="Facial-R1 engine: synthesis, training, evaluation.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error (any position).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="Score completions in an FEA-20K JSONL file with the verifier.")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--policy", choices=["strict", "paper"], default="strict")
    p.set_defaults(handler=_score)

    p = sub.add_parser("import", help="FEA-20K JSONL + images -> canonical Parquet (with quarantine).")
    p.add_argument("--jsonl", help="One source's JSONL (with --image-root).")
    p.add_argument("--image-root", dest="image_root")
    p.add_argument("--manifest", help="sources.yaml listing many sources (name, jsonl, image_root, dataset).")
    p.add_argument("--out", required=True, help="Local folder or s3:// prefix.")
    p.set_defaults(handler=_import)

    p = sub.add_parser("split", help="A labelled dataset -> OUT/seed, OUT/pool (no reasoning), OUT/test.")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="Local folder or s3:// prefix.")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--seed-size", dest="seed_size", type=int, help="Records in the seed set (with reasoning).")
    size.add_argument("--seed-fraction", dest="seed_fraction", type=float, help="Share of each stratum for seed.")
    p.add_argument("--test-fraction", dest="test_fraction", type=float, default=0.1)
    p.add_argument("--stratify", default="dataset,labels", help="Comma list of dataset, labels ('' = none).")
    p.add_argument("--seed", type=int, default=0, help="The same seed gives the same split.")
    p.set_defaults(handler=_split)

    p = sub.add_parser("export", help="Committed synthesis output -> FEA-20K JSONL with images beside it.")
    p.add_argument("uri")
    p.add_argument("--out", required=True)
    p.add_argument("--rejected", action="store_true", help="Export the rejected samples instead.")
    p.set_defaults(handler=_export)

    p = sub.add_parser("faces", help="Render a synthetic labelled face set (FEA-20K JSONL + images).")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_faces)

    p = sub.add_parser("model", help="Build models offline.")
    msub = p.add_subparsers(dest="model_command", required=True)
    t = msub.add_parser("tiny", help="A tiny random Qwen2.5-VL with a locally trained tokenizer.")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--perception-steps", dest="perception_steps", type=int, default=0,
                   help="Pretrain perception on AU-level descriptions of faces from their own seed stream "
                        "(no emotion words); 0: the random model.")
    t.set_defaults(handler=_model_tiny)

    _add_synth(sub)

    p = sub.add_parser("train", help="SFT or GRPO on committed shards (TRL + PEFT).")
    p.add_argument("stage", choices=["sft", "grpo"])
    p.add_argument("--data", nargs="+", help="Synthesis outputs, canonical datasets or FEA-20K JSONL (local or s3://); "
                   "replaces the config's sources.")
    p.add_argument("--weights", nargs="+", type=float, help="Mixing weight per --data source (default: equal).")
    p.add_argument("--model", help="Base model folder (local or s3://).")
    p.add_argument("--out", help="Local output folder.")
    p.add_argument("--config", help="YAML file with a `sft:` or `grpo:` section; flags override it.")
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--resume", action="store_true", help="Continue from the last checkpoint in --out.")
    p.add_argument("--format", choices=["parquet", "wds"], help="Shards read from synthesis outputs: Parquet "
                   "(the default) or the WebDataset tars.")
    p.add_argument("--follow", action="store_true", help="Also train on partitions committed after training "
                   "started, until the synthesis job at --data has written its summary (one source).")
    p.add_argument("--follow-timeout", dest="follow_timeout", type=float, metavar="SECONDS",
                   help="With --follow: stop waiting for the job after this many seconds.")
    p.set_defaults(handler=_train)

    p = sub.add_parser("eval", help="Generate without hints and compute the paper's metrics.")
    p.add_argument("--data", help="Test set: synthesis output, canonical dataset or FEA-20K JSONL (local or s3://).")
    p.add_argument("--model", help="Model folder (local or s3://); not needed with the replay backend.")
    p.add_argument("--out", help="Local folder for metrics.json, predictions.jsonl, report.md and plots/.")
    p.add_argument("--backend", choices=["hf", "vllm", "replay"],
                   help="Generator backend (default: the config's, else hf); replay re-scores stored completions.")
    p.add_argument("--config", help="YAML file with an `eval:` section.")
    p.add_argument("--limit", type=int, help="Evaluate the first N samples only.")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("loop", help="Run Facial-R1 self-improvement rounds.")
    p.add_argument("--config", required=True)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(handler=_loop)

    add_watch_parser(sub)

    p = sub.add_parser("demo", help="The embedded default: tiny model, synthetic faces, local Ray, two rounds.")
    p.add_argument("--out", default="demo-out", help="Run folder; rerunning with the same folder resumes.")
    p.add_argument("--seed-size", dest="seed_size", type=int, help="Faces with reference reasoning (default 48).")
    p.add_argument("--pool", type=int, help="Labelled faces whose reasoning the loop synthesises (default 2,880).")
    p.add_argument("--test", type=int, help="Held-out faces, rendered from their own seed (default 300).")
    p.add_argument("--perception-steps", dest="perception_steps", type=int,
                   help="Perception pretraining steps of the tiny model (0: none; default 300).")
    p.add_argument("--config", help="Loop YAML (default: configs/demo.yaml).")
    p.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input: one line `fea <command>: error: ...` and exit code 2; a failure of
    the world (storage unreachable too long): one line and exit code 1; --debug shows tracebacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    handler: Handler = args.handler
    try:
        return handler(args)
    except Exception as err:  # noqa: BLE001 - every failure ends as one line unless --debug
        if debug:
            raise
        code, line = preflight.describe_failure(_command_name(args), err)
        print(line, file=sys.stderr)
        return code


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(part for part in (args.command, getattr(args, "model_command", None)) if part)


if __name__ == "__main__":
    sys.exit(main())
