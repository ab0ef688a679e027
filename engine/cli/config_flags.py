"""Command-line flags made from the pydantic config tree: every field is a flag, named by its dotted path.

`fea synth --generation.max_new_tokens 512` sets `generation.max_new_tokens` of the `synth:` section
(the convention of jsonargparse and pydantic-settings). A field's description is its help, a Literal
its choices. Values are read as YAML, so numbers, booleans, `null` and lists (`--lora.target_modules
'[q_proj, v_proj]'`) are written as in the config file; pydantic then checks them as it checks the file.
A new field in the config is a new flag with no other edit.

A command may also give a few keys a short alias (`--max-new-tokens` for `generation.max_new_tokens`).
Flags override the `--config` file, which overrides the defaults.
"""
from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Union

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from engine.cli import preflight
from engine.core.config import dump_config, load_config

DEST = "config_key:"  # argparse dest prefix of a config flag; the rest is the dotted key


@dataclass(frozen=True)
class ConfigCommand:
    """How a subcommand reads its config: the schema, the YAML file's section, and the flags' spelling."""

    schema: type[BaseModel]
    section: str
    aliases: dict[str, str] = field(default_factory=dict)  # extra flag ("--model") -> dotted key
    handled: frozenset[str] = frozenset()  # keys the command sets from flags of its own (no generated flag)


@dataclass(frozen=True)
class Leaf:
    key: str  # dotted path
    annotation: Any
    info: FieldInfo
    default: Any  # the default as the enclosing section holds it; `...` when required


def config_leaves(schema: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> Iterator[Leaf]:
    """Every settable key under `schema`; sections (nested models) are walked, not settable whole."""
    for name, info in schema.model_fields.items():
        key = prefix + name
        default = getattr(defaults, name) if defaults is not None else info.get_default(call_default_factory=True)
        default = ... if default is PydanticUndefined else default
        section = _section_type(info.annotation)
        if section is not None:
            yield from config_leaves(section, key + ".", default if isinstance(default, BaseModel) else None)
        else:
            yield Leaf(key, info.annotation, info, default)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model of a section field (`GenerationConfig`, or `SFTSection | None`), else None."""
    options = _union_members(annotation)
    models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 and len(options) - len(models) <= 1 else None


def _union_members(annotation: Any) -> list[Any]:
    """The types a field takes besides None, each without its Annotated validators."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in members if a is not type(None)]


def _choices(annotation: Any) -> list[Any] | None:
    options = _union_members(annotation)
    if len(options) == 1 and typing.get_origin(options[0]) is Literal:
        return list(typing.get_args(options[0]))
    return None


def field_choices(schema: type[BaseModel], name: str) -> list[Any]:
    """The values a Literal field allows, for a hand-made flag that sets it."""
    return _choices(schema.model_fields[name].annotation) or []


def _is_text(annotation: Any) -> bool:
    """Fields whose flag value is taken as written (a path `0123` stays a string)."""
    return all(a is str for a in _union_members(annotation)) or _choices(annotation) is not None


def _value_reader(annotation: Any) -> Callable[[str], Any] | None:
    """How a flag's text becomes a value: YAML, or as written for text (`null` too where None is allowed)."""
    if not _is_text(annotation):
        return _yaml_value
    if type(None) in typing.get_args(annotation):
        return lambda text: None if text in ("null", "~") else text
    return None


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not a YAML value: {text!r} ({err.__class__.__name__})") from None


def _help(leaf: Leaf) -> str:
    text = (leaf.info.description or "").replace("%", "%%")
    if leaf.default is not ...:
        shown = leaf.default.model_dump(mode="json") if isinstance(leaf.default, BaseModel) else leaf.default
        text += f" [default: {shown!r}]".replace("%", "%%")
    return text


def add_config_flags(parser: argparse.ArgumentParser, command: ConfigCommand, print_config: bool = True) -> None:
    """`--config`, `--print-config` and one flag per settable key of the command's schema."""
    parser.usage = "%(prog)s [options] [--KEY VALUE ...]"
    parser.epilog = ("Every config key is a flag named by its dotted path (--generation.max_new_tokens 512); values "
                     "are YAML: numbers, true/false, null, [a, b].")
    parser.add_argument("--config", help=f"YAML file with a `{command.section}:` section; flags override it.")
    if print_config:
        parser.add_argument("--print-config", dest="print_config", action="store_true",
                            help="Print the config the command would run with (YAML) and exit.")
    aliases: dict[str, list[str]] = {}
    for alias, key in command.aliases.items():
        aliases.setdefault(key, []).append(alias)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for leaf in config_leaves(command.schema):
        if any(leaf.key == key or leaf.key.startswith(key + ".") for key in command.handled):
            continue
        section = leaf.key.rpartition(".")[0] or command.section
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} settings")
        choices = _choices(leaf.annotation)
        groups[section].add_argument(
            f"--{leaf.key}", *aliases.pop(leaf.key, []), dest=DEST + leaf.key, metavar=None if choices else "VALUE",
            choices=choices, type=_value_reader(leaf.annotation), help=_help(leaf),
            default=argparse.SUPPRESS)  # absent unless given, so that `null` can be given
    if aliases:  # a programming error: an alias names no key of the schema
        raise ValueError(f"aliases for unknown keys: {sorted(aliases)}")


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted keys given on the command line, with their values."""
    return {name[len(DEST):]: value for name, value in vars(args).items() if name.startswith(DEST)}


def resolve_config(args: argparse.Namespace, command: ConfigCommand, extra: dict[str, Any] | None = None) -> Any:
    """The command's config: the `--config` file's section (defaults without one), then the flags, then
    `extra` (what the command sets from flags of its own). A missing `--config` file is a UsageError."""
    preflight.check_config_file(args.config)
    overrides = {**flag_overrides(args), **(extra or {})}
    return load_config(command.schema, args.config, overrides, section=command.section if args.config else None)


def print_config_if_asked(args: argparse.Namespace, config: BaseModel) -> bool:
    if args.print_config:
        sys.stdout.write(dump_config(config))
    return bool(args.print_config)

