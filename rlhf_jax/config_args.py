"""Frozen config dataclasses <-> command-line flags and JSON config files.

Every field of a config becomes a flag named by its dotted path (``--optim.learning_rate``), with
the field's docstring as help; a nested config that may be ``None`` gets ``--<name>.off``. A JSON
file (``--config run.json``, nested like the dataclasses) gives the values that flags override.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from typing import Any

_MISSING = object()


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _parser_for(tp):
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is bool:
            return text.lower() in ("1", "true", "yes", "on")
        if tp in (int, float, str):
            return tp(text)
        if origin is tuple or tp is tuple:
            inner = (typing.get_args(tp) or (str,))[0]
            inner = int if inner is int else float if inner is float else str
            return tuple(inner(x) for x in text.split(",") if x)
        if origin in (typing.Union, types.UnionType):  # e.g. int | str
            for cand in typing.get_args(tp):
                try:
                    return cand(text)
                except (TypeError, ValueError):
                    continue
        return text

    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls, *, prefix: str = "") -> None:
    """Add one flag per (nested) field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner, optional = _unwrap_optional(tp)
        name = prefix + f.name
        if dataclasses.is_dataclass(inner):
            if optional:
                parser.add_argument(f"--{name}.off", action="store_true", default=None,
                                    help=f"set {name} to None. {docs.get(f.name, '')}")
            add_config_flags(parser, inner, prefix=name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else "required"
        parser.add_argument(f"--{name}", type=_parser_for(tp), default=None, metavar=inner.__name__.upper()
                            if isinstance(inner, type) else "VALUE",
                            help=f"{docs.get(f.name, '')} (default: {default})")


def _set(tree: dict, dotted: str, value):
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {}) if isinstance(node.get(k, {}), dict) else node
    node[keys[-1]] = value


def build_config(cls, values: dict | None = None, *, base=None):
    """A ``cls`` instance from a nested dict of values over ``base`` (or the defaults)."""
    values = values or {}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        inner, optional = _unwrap_optional(hints[f.name])
        current = getattr(base, f.name) if base is not None else (
            f.default if f.default is not dataclasses.MISSING else _MISSING)
        if f.name not in values:
            if current is not _MISSING:
                kwargs[f.name] = current
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(inner) and isinstance(v, dict):
            if v.get("off"):
                kwargs[f.name] = None
                continue
            v = {k: x for k, x in v.items() if k != "off"}
            kwargs[f.name] = build_config(inner, v, base=current if dataclasses.is_dataclass(current) else None)
        elif isinstance(v, list):
            kwargs[f.name] = tuple(v)
        else:
            kwargs[f.name] = v
    return cls(**kwargs)


def config_from_args(cls, args: argparse.Namespace, *, base=None, config_file: str | None = None):
    """The config of ``cls``: defaults (or ``base``) < JSON ``config_file`` < flags."""
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file) as f:
            values = json.load(f)
    for dotted, v in vars(args).items():
        if v is None or dotted in ("config", "func", "command"):
            continue
        if "." in dotted or dotted in {f.name for f in dataclasses.fields(cls)}:
            _set(values, dotted, v)
    return build_config(cls, values, base=base)


def config_to_dict(config) -> dict:
    """A JSON-ready nested dict of a config (what ``--config`` reads back)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
