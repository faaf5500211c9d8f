"""Typed configs from YAML files and command-line overrides.

Each component owns a dataclass config that validates itself in ``__post_init__``; this module
reads YAML files and ``key.sub=value`` overrides with OmegaConf, whose YAML loader (safe: no
code runs) reads numbers as a person writes them (``3e-4`` is a float, where YAML 1.1 reads a
string), merges them, and turns the nested result into those dataclasses with errors that name
the file or override and the dotted key, suggesting the nearest valid key. It also describes a
schema for ``--help``: every key, its default and the comment written beside its field.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def load_yaml(path: Path) -> dict[str, Any]:
    """Reads a YAML mapping safely; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err})") from None
    try:
        # the shape first, without constructing anything: OmegaConf would read a bare scalar as a key
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and not isinstance(root, yaml.MappingNode):
            raise ConfigError(f"{path}: the top level must be a mapping, got a {root.id}")
        data = OmegaConf.load(io.StringIO(text))
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    return _plain(data, str(path))


def apply_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with ``a.b.c=value`` overrides merged in (OmegaConf's dotlist: a mapping value is
    merged into the one there, anything else replaces it); each key must name a field of ``cls``."""
    merged = OmegaConf.create(data)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            check_key(cls, key)
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except (ConfigError, yaml.YAMLError, OmegaConfBaseException) as err:
            raise ConfigError(f"override {item!r}: {err}") from None
    return _plain(merged, "overrides")


def _plain(config: DictConfig, where: str) -> dict[str, Any]:
    """Plain dicts and lists; ${...} interpolation is not a config feature, so it stays text."""
    try:
        return OmegaConf.to_container(config, resolve=False)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {err}") from None


def check_key(cls: type, key: str) -> None:
    """Raises ConfigError unless dotted ``key`` names a field of dataclass ``cls`` (any sub-key
    of a mapping field counts), suggesting the nearest valid key."""
    node: Any = cls
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if typing.get_origin(node) is dict:
            return
        where = ".".join(parts[:depth])
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{where} is a value, not a section with key {part!r}")
        hints = typing.get_type_hints(node)
        if part not in hints:
            raise ConfigError(unknown_keys_message(where, [part], list(hints)))
        node = hints[part]


def unknown_keys_message(where: str, unknown: list[str], known: list[str]) -> str:
    """'unknown key(s) a.b (did you mean a.c?); known: ...': the nearest valid key of each, where one is near."""
    named = []
    for key in unknown:
        nearest = difflib.get_close_matches(key, known, n=1)
        named.append(f"{_dotted(where, key)} (did you mean {_dotted(where, nearest[0])}?)" if nearest
                     else _dotted(where, key))
    return f"unknown key(s) {', '.join(named)}; known in {where or 'the config'}: {', '.join(sorted(known))}"


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Builds dataclass ``cls`` from a nested dict; unknown or ill-typed keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise ConfigError(unknown_keys_message(where, unknown, list(fields)))
    kwargs = {name: _convert(hints[name], value, _dotted(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or 'config'}: {err}") from None


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} fits none of {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    return _convert_scalar(hint, value, where)


def _convert_scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint}")


def keys_help(cls: type) -> str:
    """One line per key of dataclass ``cls``: ``key=default`` and the comment beside its field."""
    rows = [(f"{key}={_show(default)}", meaning) for key, default, meaning in describe_keys(cls)]
    width = max(len(setting) for setting, _ in rows)
    return "\n".join(f"  {setting:<{width}}  {meaning}" for setting, meaning in rows)


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) of every field of dataclass ``cls``, sections walked in order."""
    hints, meanings = typing.get_type_hints(cls), field_comments(cls)
    rows = []
    for item in dataclasses.fields(cls):
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(hints[item.name]):
            rows += describe_keys(hints[item.name], f"{key}.")
        else:
            default = item.default if item.default_factory is dataclasses.MISSING else item.default_factory()
            rows.append((key, default, meanings.get(item.name, "")))
    return rows


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of dataclass ``cls``: the one on its line, else the first
    sentence of the comment lines just above it. The comments are the documentation of the keys,
    so a field's meaning lives beside it and --help cannot drift from it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    lines = source.splitlines()
    meanings = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            meanings[node.target.id] = comments.get(node.lineno) or _comment_above(node.lineno, comments, lines)
    return meanings


def _comment_above(line: int, comments: dict[int, str], lines: list[str]) -> str:
    block: list[str] = []
    while line - 1 in comments and lines[line - 2].lstrip().startswith("#"):
        line -= 1
        block.insert(0, comments[line])
    return " ".join(block).split(". ")[0]


def _show(value: Any) -> str:
    return value if isinstance(value, str) and value else json.dumps(value)
