"""Config values by type: checks of JSON/Python values (`coerce`), flag text (`parse_text`),
defaults written back as flag text (`format_default`), and the words for each type (`describe`).

The rules are those of `rlhf_jax.config_args` (see its docstring): integers are fine for floats,
a boolean is not an integer, lists become tuples, ``null`` only for optional fields; flag text for
a boolean is ``true/false``, ``1/0`` or ``yes/no`` (any case), for a tuple a comma list or a JSON
list, for an optional field ``none``/``null`` means ``None``. Every refusal is a `ConfigError`
that names the field (or flag), the expected type and the value given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from typing import Any, Literal

from rlhf_jax.config_checks import ConfigError

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def split_optional(tp) -> tuple[Any, bool]:
    """``(type without None, whether None is allowed)``: ``int | None`` -> ``(int, True)``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return tp, False


def is_config(tp) -> bool:
    """Whether ``tp`` is a dataclass type (a nested config)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def describe(tp) -> str:
    """What a value of type ``tp`` must be, in words (for error messages)."""
    inner, optional = split_optional(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is bool:
        text = "a boolean (true/false, 1/0, yes/no)"
    elif inner in (int, float, str):
        text = {int: "an integer", float: "a number", str: "a string"}[inner]
    elif origin is Literal:
        text = "one of " + ", ".join(json.dumps(a) for a in args)
    elif origin is tuple or inner is tuple:
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        text = "a list" + (f" of {plural[args[0]]}" if args and args[-1] is Ellipsis and args[0] in plural else "")
    elif is_config(inner):
        text = f"an object of {inner.__name__} fields"
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join(describe(a) for a in args)
    else:
        text = getattr(inner, "__name__", str(inner))
    return text + (" or null" if optional else "")


def show(value: Any) -> str:
    """A value as JSON (``null``, ``"ture"``), else its repr."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def wrong(where: str, tp, value: Any) -> ConfigError:
    return ConfigError(f"{where} must be {describe(tp)}, got {show(value)}")


def coerce(value: Any, tp, where: str) -> Any:
    """``value`` (from JSON or Python) checked against ``tp``: ints become floats, lists tuples;
    a wrong type is a `ConfigError` naming ``where``. A nested config must be an instance here
    (`rlhf_jax.config_args.build_config` turns dicts into configs)."""
    inner, optional = split_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise wrong(where, tp, value)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
    elif inner is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif inner is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif origin is tuple or inner is tuple:
        if isinstance(value, (list, tuple)):
            if not args or args[-1] is Ellipsis:
                elem = args[0] if args else Any
                return tuple(coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif is_config(inner):
        if isinstance(value, inner):  # a dict becomes a config in rlhf_jax.config_args.build_config
            return value
    elif origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return coerce(value, a, where)
            except ConfigError:
                continue
    elif inner is Any or not isinstance(inner, type) or isinstance(value, inner):
        return value
    raise wrong(where, tp, value)


def parse_text(text: str, tp, where: str) -> Any:
    """A flag's text read as a value of type ``tp`` (module docstring); ``where`` names the flag
    in the `ConfigError`."""
    inner, optional = split_optional(tp)
    t = text.strip()
    if optional and t.lower() in ("none", "null"):
        return None
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    try:
        if inner is int:
            return int(t)
        if inner is float:
            return coerce(float(t), float, where)
        if origin is tuple or inner is tuple:
            if t.startswith("["):
                return coerce(json.loads(t), tp, where)
            items = [x.strip() for x in t.split(",")] if t else []
            if args and args[-1] is not Ellipsis:
                if len(items) != len(args):
                    raise ValueError
                return tuple(parse_text(x, a, f"{where}[{i}]") for i, (x, a) in enumerate(zip(items, args)))
            elem = args[0] if args else str
            return tuple(parse_text(x, elem, f"{where}[{i}]") for i, x in enumerate(items))
        if origin is Literal:
            for a in args:
                if str(a) == t:
                    return a
            raise ValueError
        if origin in (typing.Union, types.UnionType):
            for a in args:
                try:
                    return parse_text(text, a, where)
                except ConfigError:
                    continue
            raise ValueError
    except ConfigError:
        raise
    except ValueError:  # int(), float(), json.loads (JSONDecodeError) and the cases above
        raise ConfigError(f"{where} must be {describe(tp)}, got {show(text)}") from None
    if inner is str:
        return text
    return coerce(t, tp, where)  # bool words; anything else as text


def format_default(value: Any) -> str:
    """A default as flag text that `parse_text` reads back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        plain = all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in value)
        if value and plain and all(str(x) == str(x).strip() and "," not in str(x) and str(x) for x in value):
            return ",".join(str(x) for x in value)
        return json.dumps(list(value))
    return str(value)
