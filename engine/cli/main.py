"""`fea ...`: each subcommand parses its flags and calls one library function.

The commands that run a configured stage (synth, train, eval, loop, demo) take their flags from the
pydantic config tree (config_flags.py): `--generation.max_new_tokens 512`, with a few short aliases.
Heavy modules (torch, ray, vllm, trl) are imported inside the handlers so `fea --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from engine.cli import preflight
from engine.cli.config_flags import (ConfigCommand, add_config_flags, field_choices, flag_overrides,
                                     print_config_if_asked, resolve_config)
from engine.core.config import DataSource, EvalSection, GRPOSection, LoopConfig, SFTSection, SynthConfig, VerifierConfig
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


# ---------------------------------------------------------------- configured stages
SYNTH = ConfigCommand(SynthConfig, "synth", aliases={
    "--model": "model.path", "--adapter": "model.adapter", "--backend": "generation.backend",
    "--image-root": "image_root", "--replay-path": "generation.replay_path", "--max-retries": "max_retries",
    "--max-new-tokens": "generation.max_new_tokens", "--batch-size": "generation.batch_size",
    "--partition-size": "partition_size", "--policy": "verifier.policy", "--job-id": "job_id"})
TRAIN_ALIASES = {"--model": "model.path", "--max-steps": "max_steps"}
TRAIN = {"sft": ConfigCommand(SFTSection, "sft", TRAIN_ALIASES, handled=frozenset({"data"})),
         "grpo": ConfigCommand(GRPOSection, "grpo", TRAIN_ALIASES, handled=frozenset({"data"}))}
EVAL = ConfigCommand(EvalSection, "eval", aliases={"--model": "model.path", "--backend": "generation.backend"})
LOOP = ConfigCommand(LoopConfig, "loop")
# the demo sets its run folder, model and data itself; its --pool and --test are sizes
DEMO = ConfigCommand(LoopConfig, "loop", handled=frozenset({"out", "base_model.path", "seed_data", "pool", "test"}))


def _synth(args: argparse.Namespace) -> int:
    import logging

    from engine.synth.job import run_synth

    cfg = resolve_config(args, SYNTH, {"hint": False} if args.no_hint else None)
    if print_config_if_asked(args, cfg):
        return 0
    preflight.check_synth(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _print_json(run_synth(cfg, wait_for_lease=args.wait))
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = _add_parser(sub, "synth", "Generate, filter and commit reasoning for labelled images.")
    add_config_flags(p, SYNTH)
    p.add_argument("--no-hint", action="store_true", help="Prompt without the label 'ground truth' block (hint: false).")
    p.add_argument("--wait", action="store_true",
                   help="When another driver is writing --out, wait for it to finish instead of refusing.")
    p.set_defaults(handler=_synth)


def _train(args: argparse.Namespace) -> int:
    from trainer.data import check_sources
    from trainer.run import train, training_config

    preflight.check_config_file(args.config)
    try:
        cfg = training_config(args.stage, config_path=args.config, overrides=flag_overrides(args), data=args.data,
                              weights=args.weights, shard_format=args.format, follow=args.follow,
                              follow_timeout=args.follow_timeout)
    except ValueError as err:  # --weights that do not fit --data (a ConfigError is a ValueError too)
        raise preflight.UsageError(str(err)) from None
    if print_config_if_asked(args, cfg):
        return 0
    preflight.check_training(cfg)
    if any(source.follow for source in cfg.data):  # the partitions it reads and its waits are logged
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        check_sources(cfg.data)  # --format wds, partitions, --follow: synthesis outputs only
    except ValueError as err:
        raise preflight.UsageError(str(err)) from None
    _print_json(train(args.stage, cfg, resume=args.resume))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _add_parser(sub, "train", "SFT or GRPO on committed shards (TRL + PEFT).")
    stages = p.add_subparsers(dest="stage", required=True)
    for stage, command in TRAIN.items():
        s = _add_parser(stages, stage, f"{stage.upper()} (the `{stage}:` section of --config; flags override it).")
        s.add_argument("--data", nargs="+", help="Synthesis outputs, canonical datasets or FEA-20K JSONL (local or "
                       "s3://); replaces the config's sources.")
        s.add_argument("--weights", nargs="+", type=float, help="Mixing weight per --data source (default: equal).")
        s.add_argument("--resume", action="store_true", help="Continue from the last checkpoint in --out.")
        s.add_argument("--format", choices=field_choices(DataSource, "format"),
                       help="Shards read from synthesis outputs: Parquet (the default) or the WebDataset tars.")
        s.add_argument("--follow", action="store_true", help="Also train on partitions committed after training "
                       "started, until the synthesis job at --data has written its summary (one source).")
        s.add_argument("--follow-timeout", dest="follow_timeout", type=float, metavar="SECONDS",
                       help="With --follow: stop waiting for the job after this many seconds.")
        add_config_flags(s, command)
        s.set_defaults(handler=_train)


def _eval(args: argparse.Namespace) -> int:
    from trainer.eval import run_eval

    cfg = resolve_config(args, EVAL)
    if print_config_if_asked(args, cfg):
        return 0
    preflight.check_eval(cfg)
    _print_json(run_eval(cfg))
    return 0


def _loop(args: argparse.Namespace) -> int:
    from engine.loop.rounds import run_loop

    cfg = resolve_config(args, LOOP)
    if print_config_if_asked(args, cfg):
        return 0
    preflight.check_loop(cfg)
    _print_json(run_loop(cfg, resume=args.resume))
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
    summary = run_demo(args.out, size, overrides=flag_overrides(args),
                       **({"config_path": args.config} if args.config else {}))
    print(f"demo finished; report: {summary['report']}")
    return 0


def _add_parser(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text, allow_abbrev=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fea", description="Facial-R1 engine: synthesis, training, evaluation.",
                                     allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error (any position).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _add_parser(sub, "score", "Score completions in an FEA-20K JSONL file with the verifier.")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--policy", choices=field_choices(VerifierConfig, "policy"), default="strict")
    p.set_defaults(handler=_score)

    p = _add_parser(sub, "import", "FEA-20K JSONL + images -> canonical Parquet (with quarantine).")
    p.add_argument("--jsonl", help="One source's JSONL (with --image-root).")
    p.add_argument("--image-root", dest="image_root")
    p.add_argument("--manifest", help="sources.yaml listing many sources (name, jsonl, image_root, dataset).")
    p.add_argument("--out", required=True, help="Local folder or s3:// prefix.")
    p.set_defaults(handler=_import)

    p = _add_parser(sub, "split", "A labelled dataset -> OUT/seed, OUT/pool (no reasoning), OUT/test.")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="Local folder or s3:// prefix.")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--seed-size", dest="seed_size", type=int, help="Records in the seed set (with reasoning).")
    size.add_argument("--seed-fraction", dest="seed_fraction", type=float, help="Share of each stratum for seed.")
    p.add_argument("--test-fraction", dest="test_fraction", type=float, default=0.1)
    p.add_argument("--stratify", default="dataset,labels", help="Comma list of dataset, labels ('' = none).")
    p.add_argument("--seed", type=int, default=0, help="The same seed gives the same split.")
    p.set_defaults(handler=_split)

    p = _add_parser(sub, "export", "Committed synthesis output -> FEA-20K JSONL with images beside it.")
    p.add_argument("uri")
    p.add_argument("--out", required=True)
    p.add_argument("--rejected", action="store_true", help="Export the rejected samples instead.")
    p.set_defaults(handler=_export)

    p = _add_parser(sub, "faces", "Render a synthetic labelled face set (FEA-20K JSONL + images).")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_faces)

    p = _add_parser(sub, "model", "Build models offline.")
    msub = p.add_subparsers(dest="model_command", required=True)
    t = _add_parser(msub, "tiny", "A tiny random Qwen2.5-VL with a locally trained tokenizer.")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--perception-steps", dest="perception_steps", type=int, default=0,
                   help="Pretrain perception on AU-level descriptions of faces from their own seed stream "
                        "(no emotion words); 0: the random model.")
    t.set_defaults(handler=_model_tiny)

    _add_synth(sub)

    _add_train(sub)

    p = _add_parser(sub, "eval", "Generate without hints and compute the paper's metrics.")
    add_config_flags(p, EVAL)
    p.set_defaults(handler=_eval)

    p = _add_parser(sub, "loop", "Run Facial-R1 self-improvement rounds.")
    add_config_flags(p, LOOP)
    p.add_argument("--resume", action="store_true", help="Continue the run in the config's out where it stopped.")
    p.set_defaults(handler=_loop)

    add_watch_parser(sub)

    p = _add_parser(sub, "demo", "The embedded default: tiny model, synthetic faces, local Ray, two rounds.")
    p.add_argument("--out", default="demo-out", help="Run folder; rerunning with the same folder resumes.")
    p.add_argument("--seed-size", dest="seed_size", type=int, help="Faces with reference reasoning (default 48).")
    p.add_argument("--pool", type=int, help="Labelled faces whose reasoning the loop synthesises (default 2,880).")
    p.add_argument("--test", type=int, help="Held-out faces, rendered from their own seed (default 300).")
    p.add_argument("--perception-steps", dest="perception_steps", type=int,
                   help="Perception pretraining steps of the tiny model (0: none; default 300).")
    add_config_flags(p, DEMO, print_config=False)
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
