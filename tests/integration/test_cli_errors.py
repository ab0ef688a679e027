"""Every `fea` command answers bad input with one line `fea <command>: error: ...` and exit code 2,
before it starts Ray or loads a model; object storage faults (unreachable, refused credentials, no
bucket) are found by talking to a real S3 server (SeaweedFS) and to a closed port on loopback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.cli.main import main

REPO = Path(__file__).resolve().parents[2]

# command -> kind of bad input -> (argv with {placeholders}, text the error line must hold)
TABLE: dict[str, dict[str, tuple[str, str]]] = {
    "synth": {
        "missing_input": ("synth --input {missing}.jsonl --model {model} --out {out}", "no such file"),
        "bad_scheme": ("synth --input gs://b/x --model {model} --out {out}", "unsupported scheme"),
        "missing_model": ("synth --input {jsonl} --model {missing} --out {out}", "--model"),
        "not_a_model": ("synth --input {jsonl} --model {empty} --out {out}", "no config.json"),
        "zero_size": ("synth --input {jsonl} --model {model} --out {out} --partition-size 0", "partition_size"),
        "negative_size": ("synth --input {jsonl} --model {model} --out {out} --generators -1", "generators"),
        "unknown_key": ("synth --config {bad_synth_yaml} --input {jsonl} --model {model} --out {out}", "partiton_size"),
        "missing_config": ("synth --config {missing}.yaml --input {jsonl} --model {model} --out {out}", "--config"),
        "unreachable": ("synth --input {jsonl} --model {model} --out s3://fea-test/o", "cannot reach"),
        "bad_credentials": ("synth --input {jsonl} --model {model} --out s3://fea-test/o", "refused the credentials"),
        "missing_bucket": ("synth --input {jsonl} --model {model} --out s3://no-such-bucket-x/o", "does not exist"),
    },
    "import": {
        "missing_input": ("import --jsonl {missing}.jsonl --image-root {images} --out {out}", "no such file"),
        "missing_manifest": ("import --manifest {missing}.yaml --out {out}", "no such file"),
        "not_a_folder": ("import --jsonl {jsonl} --image-root {jsonl} --out {out}", "not a folder"),
        "out_is_file": ("import --jsonl {jsonl} --image-root {images} --out {jsonl}", "not a folder"),
        "unreachable": ("import --jsonl {jsonl} --image-root {images} --out s3://fea-test/i", "cannot reach"),
        "bad_credentials": ("import --jsonl {jsonl} --image-root {images} --out s3://fea-test/i",
                            "refused the credentials"),
    },
    "export": {
        "missing_input": ("export {missing} --out {out}/x.jsonl", "no such file"),
        "bad_scheme": ("export http://example/x --out {out}/x.jsonl", "unsupported scheme"),
        "out_is_folder": ("export {images} --out {images}", "is a folder"),
        "unreachable": ("export s3://fea-test/synth --out {out}/x.jsonl", "cannot reach"),
        "missing_bucket": ("export s3://no-such-bucket-x/synth --out {out}/x.jsonl", "does not exist"),
    },
    "score": {
        "missing_input": ("score {missing}.jsonl --out {out}/s.jsonl", "no such file"),
        "not_a_file": ("score {images} --out {out}/s.jsonl", "not a file"),
    },
    "train": {
        "missing_data": ("train sft --data {missing} --model {model} --out {out}", "no such file"),
        "missing_model": ("train sft --data {jsonl} --model {missing} --out {out}", "--model"),
        "hub_id_model": ("train grpo --data {jsonl} --model Qwen/Qwen2.5-VL-7B-Instruct --out {out}", "--model"),
        "not_a_model": ("train sft --data {jsonl} --model {empty} --out {out}", "no config.json"),
        "s3_out": ("train sft --data {jsonl} --model {model} --out s3://fea-test/t", "local folder"),
        "weights_mismatch": ("train sft --data {jsonl} --weights 1 2 --model {model} --out {out}", "weights"),
        "unknown_key": ("train sft --config {bad_sft_yaml} --data {jsonl} --model {model} --out {out}", "learning_rat"),
        "bad_credentials": ("train sft --data s3://fea-test/d --model {model} --out {out}", "refused the credentials"),
    },
    "eval": {
        "missing_data": ("eval --data {missing}.jsonl --model {model} --out {out}", "no such file"),
        "missing_model": ("eval --data {jsonl} --model {missing} --out {out}", "--model"),
        "zero_size": ("eval --data {jsonl} --model {model} --out {out} --limit 0", "limit: Input should be greater"),
        "unreachable": ("eval --data s3://fea-test/d --model {model} --out {out}", "cannot reach"),
    },
    "loop": {
        "missing_config": ("loop --config {missing}.yaml", "no such file"),
        "unknown_key": ("loop --config {loop_unknown_key}", "roundz"),
        "zero_size": ("loop --config {loop_zero_rounds}", "rounds"),
        "missing_model": ("loop --config {loop_missing_model}", "base_model.path"),
        "missing_pool": ("loop --config {loop_missing_pool}", "pool"),
        "unreachable": ("loop --config {loop_s3_out}", "cannot reach"),
    },
    "split": {
        "missing_input": ("split --input {missing}.jsonl --out {out} --seed-size 4", "no such file"),
        "out_is_file": ("split --input {jsonl} --out {jsonl} --seed-size 4", "not a folder"),
        "unreachable": ("split --input {jsonl} --out s3://fea-test/split --seed-size 4", "cannot reach"),
    },
    "faces": {
        "zero_size": ("faces --n 0 --out {out}", "--n"),
        "out_is_file": ("faces --n 4 --out {jsonl}", "not a folder"),
    },
    "model tiny": {
        "out_under_file": ("model tiny --out {jsonl}/model", "is a file"),
    },
    "watch": {
        "missing_config": ("watch --data {out} --config {missing}.yaml --min-new 4 --once", "no such file"),
        "zero_size": ("watch --data {out} --config {missing}.yaml --min-new 0 --once", "--min-new"),
    },
    "demo": {
        "zero_size": ("demo --out {out} --pool 0", "--pool"),
        "missing_config": ("demo --out {out} --config {missing}.yaml", "--config"),
    },
}
CASES = [(command, kind) for command, kinds in TABLE.items() for kind in kinds]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    (root / "images").mkdir()
    (root / "empty").mkdir()
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    jsonl = root / "samples.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "image": "a.png"}) + "\n")
    values = {"missing": str(root / "does-not-exist"), "model": str(root / "model"), "empty": str(root / "empty"),
              "images": str(root / "images"), "jsonl": str(jsonl), "out": str(root / "out")}
    loop = {"out": values["out"], "base_model": {"path": values["model"]}, "seed_data": [values["jsonl"]],
            "pool": values["jsonl"], "test": values["jsonl"]}
    files = {"bad_synth_yaml": {"synth": {"partiton_size": 4}},
             "bad_sft_yaml": {"sft": {"learning_rat": 0.1}},
             "loop_unknown_key": {"loop": {**loop, "roundz": 2}},
             "loop_zero_rounds": {"loop": {**loop, "rounds": 0}},
             "loop_missing_model": {"loop": {**loop, "base_model": {"path": values["missing"]}}},
             "loop_missing_pool": {"loop": {**loop, "pool": values["missing"] + ".jsonl"}},
             "loop_s3_out": {"loop": {**loop, "out": "s3://fea-test/loop"}}}
    for name, tree in files.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tree))
        values[name] = str(path)
    return values


def _run(command: str, kind: str, places: dict[str, str], capsys) -> tuple[int, list[str]]:
    argv = TABLE[command][kind][0].format(**places).split()
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def _assert_one_line_error(command: str, kind: str, rc: int, lines: list[str], secret: str | None = None) -> None:
    expected = TABLE[command][kind][1]
    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"fea {command}: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    if secret:
        assert secret not in lines[0]


LOCAL = [(c, k) for c, k in CASES if k not in ("unreachable", "bad_credentials", "missing_bucket")]
STORAGE = [(c, k) for c, k in CASES if k in ("unreachable", "bad_credentials", "missing_bucket")]


@pytest.mark.parametrize("command,kind", LOCAL, ids=[f"{c}-{k}" for c, k in LOCAL])
def test_bad_local_input_is_one_line_and_exit_2(command, kind, places, capsys):
    import ray

    rc, lines = _run(command, kind, places, capsys)
    _assert_one_line_error(command, kind, rc, lines)
    assert not ray.is_initialized()
    assert not Path(places["out"]).exists(), "the command wrote output before refusing"


@pytest.mark.parametrize("command,kind", STORAGE, ids=[f"{c}-{k}" for c, k in STORAGE])
def test_bad_storage_is_one_line_and_exit_2(command, kind, places, capsys, s3, monkeypatch):
    if kind == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    elif kind == "bad_credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    rc, lines = _run(command, kind, places, capsys)
    _assert_one_line_error(command, kind, rc, lines, secret=s3.secret_key)


def test_every_command_has_a_bad_input_case():
    from engine.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {c.split()[0] for c in TABLE}
    assert set(sub.choices) <= covered, f"commands without a bad-input case: {set(sub.choices) - covered}"


def test_the_installed_command_exits_2_without_traceback_or_heavy_imports(places):
    """The real process: exit status, stderr, and that neither Ray nor torch was imported to find out."""
    argv = TABLE["synth"]["missing_model"][0].format(**places).split()
    probe = ("import sys; from engine.cli.main import main; rc = main(sys.argv[1:]); "
             "print(sorted(m for m in ('torch', 'ray', 'vllm', 'transformers') if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=60, env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == "[]"
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_debug_shows_the_traceback(places):
    argv = TABLE["score"]["missing_input"][0].format(**places).split()
    done = subprocess.run([sys.executable, "-m", "engine.cli", "--debug", *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode != 0 and "Traceback" in done.stderr and "UsageError" in done.stderr
