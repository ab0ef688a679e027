"""The configured commands take their flags from the pydantic config tree: every key is a flag named by its
dotted path, with its description as help; values are YAML; flags override the --config file."""
from __future__ import annotations

import argparse

import pytest
import yaml
from pydantic import Field

from engine.backends.registry import BACKENDS, backend_class
from engine.cli.config_flags import ConfigCommand, add_config_flags, resolve_config
from engine.cli.main import DEMO, EVAL, LOOP, SYNTH, TRAIN, build_parser, main
from engine.core.config import (EvalSection, GenerationConfig, GRPOSection, LoopConfig, Section, SFTSection,
                                SynthConfig, VerifierConfig)


def _flatten(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in tree.items():
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _config_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest.split(":", 1)[1]: a for a in parser._actions if a.dest.startswith("config_key:")}


LOOP_EVERY_SECTION = LoopConfig(out="o", pool="p", test="t", base_model={"path": "m"}, seed_data=["s"],
                                retrain=SFTSection(), verifier=VerifierConfig(), prompt_style="full")
EVERY_KEY = {  # command -> (its parser's path, the keys of a config with every section present)
    "synth": (("synth",), SynthConfig()),
    "train sft": (("train", "sft"), SFTSection()),
    "train grpo": (("train", "grpo"), GRPOSection()),
    "eval": (("eval",), EvalSection()),
    "loop": (("loop",), LOOP_EVERY_SECTION),
    "demo": (("demo",), LOOP_EVERY_SECTION),
}
HANDLED = {"synth": SYNTH, "train sft": TRAIN["sft"], "train grpo": TRAIN["grpo"], "eval": EVAL, "loop": LOOP,
           "demo": DEMO}


@pytest.mark.parametrize("command", sorted(EVERY_KEY))
def test_every_config_key_is_a_flag_with_its_description(command):
    path, config = EVERY_KEY[command]
    flags = _config_flags(_subparser(*path))
    handled = HANDLED[command].handled
    expected = {key for key in _flatten(config.model_dump())
                if not any(key == h or key.startswith(h + ".") for h in handled)}
    assert set(flags) == expected
    for key, action in flags.items():
        assert f"--{key}" in action.option_strings
        *sections, name = key.split(".")
        section = config
        for part in sections:
            section = getattr(section, part)
        assert action.help.startswith(type(section).model_fields[name].description.replace("%", "%%"))


def _printed(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_flags_override_the_file_and_reach_nested_sections(tmp_path, capsys):
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({"synth": {"generation": {"batch_size": 3, "max_new_tokens": 64},
                                                "filters": 2}}))
    printed = _printed(capsys, ["synth", "--config", str(config), "--generation.max_new_tokens", "512",
                                "--verifier.forbidden_words", "[never, nothing]", "--hint", "false",
                                "--model", "0123", "--print-config"])
    assert printed["generation"] == {**GenerationConfig(batch_size=3, max_new_tokens=512).model_dump(mode="json")}
    assert printed["filters"] == 2  # from the file
    assert printed["verifier"]["forbidden_words"] == ["never", "nothing"]
    assert printed["hint"] is False
    assert printed["model"]["path"] == "0123"  # a text field keeps what was written
    alias = _printed(capsys, ["synth", "--config", str(config), "--max-new-tokens", "7", "--no-hint", "--print-config"])
    assert alias["generation"]["max_new_tokens"] == 7 and alias["hint"] is False
    config.write_text(yaml.safe_dump({"synth": {"job_id": "j", "model": {"adapter": "a"}}}))
    unset = _printed(capsys, ["synth", "--config", str(config), "--job_id", "null", "--model.adapter", "~",
                              "--print-config"])
    assert unset["job_id"] is None and unset["model"]["adapter"] is None  # null unsets what the file set


def test_loop_flags_reach_every_stage_and_shared_settings_are_handed_down(tmp_path, capsys):
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({"loop": {"out": "o", "pool": "p", "test": "t", "base_model": {"path": "m"},
                                               "seed_data": ["s"]}}))
    printed = _printed(capsys, ["loop", "--config", str(config), "--synth.generation.max_new_tokens", "99",
                                "--grpo.num_generations", "4", "--prompt_style", "compact",
                                "--verifier.policy", "paper", "--print-config"])
    assert printed["synth"]["generation"]["max_new_tokens"] == 99
    assert printed["grpo"]["num_generations"] == 4
    assert {printed[s]["prompt_style"] for s in ("sft", "grpo", "synth", "eval")} == {"compact"}
    assert {printed[s]["verifier"]["policy"] for s in ("grpo", "synth", "eval")} == {"paper"}


def test_train_flags_combine_with_data_and_weights(capsys):
    printed = _printed(capsys, ["train", "grpo", "--data", "a", "b", "--weights", "3", "1", "--lora.r", "4",
                                "--max-steps", "5", "--out", "o", "--print-config"])
    assert [(s["uri"], s["weight"]) for s in printed["data"]] == [("a", 3.0), ("b", 1.0)]
    assert printed["lora"]["r"] == 4 and printed["max_steps"] == 5 and printed["num_generations"] == 8
    unset = _printed(capsys, ["train", "sft", "--save_total_limit", "null", "--max_length", "512", "--print-config"])
    assert unset["save_total_limit"] is None and unset["max_length"] == 512


@pytest.mark.parametrize("argv, expected", [
    (["synth", "--generation.max_new_token", "5"], "unrecognized arguments: --generation.max_new_token"),
    (["synth", "--gen", "5"], "unrecognized arguments: --gen"),  # no abbreviations
    (["synth", "--backend", "tgi"], "invalid choice: 'tgi'"),
    (["synth", "--verifier.forbidden_words", "[a, b"], "not a YAML value"),
])
def test_a_flag_that_is_not_a_key_or_value_is_refused_by_the_parser(argv, expected, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_value_the_schema_refuses_is_one_line_naming_the_key(capsys):
    assert main(["synth", "--generation.max_new_tokens", "zero", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fea synth: error: ")
    assert "generation.max_new_tokens" in err[0]


class _Inner(Section):
    depth: int = Field(2, ge=1, description="How deep.")


class _Toy(Section):
    name: str = Field("x", description="A name.")
    inner: _Inner = _Inner()


def test_a_new_field_is_a_new_flag_with_no_other_edit():
    parser = argparse.ArgumentParser()
    command = ConfigCommand(_Toy, "toy", aliases={"--depth": "inner.depth"})
    add_config_flags(parser, command)
    assert resolve_config(parser.parse_args(["--inner.depth", "5"]), command) == _Toy(inner=_Inner(depth=5))
    assert resolve_config(parser.parse_args(["--depth", "3", "--name", "y"]), command) == _Toy(
        name="y", inner=_Inner(depth=3))
    assert "How deep. [default: 2]" in parser.format_help()
    with pytest.raises(ValueError, match="inner.width"):
        add_config_flags(argparse.ArgumentParser(), ConfigCommand(_Toy, "toy", aliases={"--w": "inner.width"}))


def test_backend_choices_come_from_the_one_registry():
    choices = list(BACKENDS)
    assert GenerationConfig.model_json_schema()["properties"]["backend"]["enum"] == choices
    for path in (("synth",), ("eval",)):
        assert _config_flags(_subparser(*path))["generation.backend"].choices == choices
    assert _config_flags(_subparser("loop"))["synth.generation.backend"].choices == choices
    assert backend_class("replay").name == "replay"
    with pytest.raises(ValueError, match="known: hf, vllm, replay"):
        backend_class("tgi")
