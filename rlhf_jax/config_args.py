"""Frozen config dataclasses <-> command-line flags and JSON config files, strictly.

**Flags.** Every field becomes a flag named by its dotted path (``--optim.learning_rate``), with
the field's docstring as help and its real default: for a nested config, the value in the
enclosing config's default instance (SFTConfig's ``--optim.learning_rate`` shows 0.001, the
``OptimConfig(learning_rate=1e-3)`` SFTConfig uses, not OptimConfig's own 1e-4). Flag text is
read by the field's type (`parse_text`):

* booleans: ``true/false``, ``1/0``, ``yes/no`` in any case; anything else (``ture``) is an error;
* integers and numbers: Python literals; an integer is fine for a float field; a negative
  number is written ``--optim.learning_rate=-1e-3`` (argparse reads ``-1e-3`` alone as an option);
* tuples (``--lora.targets``): a comma list ``q_proj,v_proj`` or a JSON list
  ``'["q_proj", "v_proj"]'`` (needed when an item holds a comma); empty text is ``()``;
* optional fields: ``none`` or ``null`` for ``None``.

**Optional nested configs** (``lora: LoraConfig | None``) get two switches, ``--lora.on`` and
``--lora.off``. Setting any ``--lora.FIELD`` while the config is ``None`` (its default, or
``null`` in the JSON file) turns it on: it is built from ``LoraConfig``'s class defaults with the
given fields over them, exactly as ``--lora.on --lora.FIELD ...`` does. ``--lora.off`` with a
``--lora.FIELD`` flag is an error.

**JSON files** (``--config run.json``) are nested like the dataclasses; flags override them, and
they override the defaults (or ``base``). They are strict, as are dicts given to `build_config`:
an unknown key is an error naming the closest valid key and the config class; a value of the
wrong type names the field, the expected type and the value (an integer is fine for a float, a
boolean is not an integer, a list becomes a tuple, an object a nested config, ``null`` only for
an optional field; a boolean is ``true``/``false`` or one of the words above as a string, never
a number); a key given twice in one object is an error.

**Errors.** Every problem raises `rlhf_jax.config_checks.ConfigError` (a ``ValueError``) with one
line: a bad flag, key, type or file, and any ``ValueError`` of a config's ``__post_init__``
while it is built here. A command line catches ``ConfigError`` to print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import textwrap
import typing
from typing import Any, Iterator, Literal, Mapping

from rlhf_jax.config_checks import ConfigError
from rlhf_jax.config_values import coerce, describe, format_default, is_config, parse_text, show, split_optional

_MISSING = object()


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field in the class body, and in
    the bodies of its dataclass bases (a subclass's literal wins for a field it redeclares)."""
    docs = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


class _Fresh(dict):
    """Values for an optional nested config that was ``None``: built over its class defaults."""


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def build_config(cls, values: Mapping[str, Any] | None = None, *, base=None, where: str | None = None,
                 source: str | None = None):
    """A ``cls`` instance from a nested dict of ``values`` over ``base`` (or the defaults).

    Strict (module docstring): unknown keys and wrong types are `ConfigError` naming the path
    from ``where`` (default: the class name), prefixed with ``source`` (e.g. the JSON file's
    path) when given; a ``ValueError`` of the config's own checks becomes a `ConfigError`.
    """
    where = where or cls.__name__
    prefix = f"{source}: " if source else ""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}{where} must be {describe(cls)}, got {show(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix}unknown key {key!r} in {cls.__name__} (at {where}.{key}); {hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        current = getattr(base, name) if base is not None else _field_default(f)
        path = f"{where}.{name}"
        if name not in values:
            if current is _MISSING:
                raise ConfigError(f"{prefix}{path} is required ({describe(hints[name])})")
            kwargs[name] = current
            continue
        value, (inner, optional) = values[name], split_optional(hints[name])
        if isinstance(value, _Fresh) and not optional:  # a JSON null under flags of its fields
            raise ConfigError(f"{prefix}{path} must be {describe(hints[name])}, got null")
        if is_config(inner) and isinstance(value, Mapping):
            nested_base = current if isinstance(current, inner) and not isinstance(value, _Fresh) else None
            kwargs[name] = build_config(inner, value, base=nested_base, where=path, source=source)
            continue
        try:
            kwargs[name] = coerce(value, hints[name], path)
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        raise ConfigError(message if where == cls.__name__ else f"{where}: {message}") from e


def _default_instance(cls):
    try:
        return cls()
    except (TypeError, ValueError):  # a required field (SamplingConfig.max_new_tokens)
        return None


def _metavar(tp) -> str:
    inner, _ = split_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(inner)) + "}"
    if origin is tuple or inner is tuple:
        return "LIST"
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(inner, "VALUE")


def switch_dest(name: str) -> str:
    """The argparse ``dest`` of the ``--NAME.on`` / ``--NAME.off`` switches."""
    return f"{name}.<on|off>"


def add_config_flags(parser: argparse.ArgumentParser, cls, *, prefix: str = "", default: Any = _MISSING,
                     when_on: bool = False) -> None:
    """Add one flag per (nested) field of the dataclass ``cls``, showing the real defaults: those
    of ``default`` (the default instance of ``cls`` unless given), walked into nested configs.

    ``when_on`` marks fields of an optional config that is off by default: their help shows
    the class defaults it gets when turned on.
    """
    instance = _default_instance(cls) if default is _MISSING else default
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner, optional = split_optional(tp)
        name = prefix + f.name
        value = getattr(instance, f.name) if instance is not None else _field_default(f)
        doc = docs.get(f.name, "").replace("%", "%%")
        if is_config(inner):
            if optional:
                state = "off" if value is None else "on"
                group = parser.add_mutually_exclusive_group()
                group.add_argument(f"--{name}.on", dest=switch_dest(name), action="store_const", const="on",
                                   default=None, help=f"turn {name} ({inner.__name__}) on: {doc} (default: {state})")
                group.add_argument(f"--{name}.off", dest=switch_dest(name), action="store_const", const="off",
                                   default=None, help=f"set {name} to null (default: {state})")
            nested = value if isinstance(value, inner) else _default_instance(inner)
            add_config_flags(parser, inner, prefix=name + ".", default=nested, when_on=when_on or value is None)
            continue
        shown = "required" if value is _MISSING else \
            f"default{' when on' if when_on else ''}: {format_default(value).replace('%', '%%')}"
        parser.add_argument(f"--{name}", default=None, metavar=_metavar(tp), help=f"{doc} ({shown})")


def config_paths(cls, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """``("switch", NAME, cls)`` per optional nested config and ``("value", dotted, type)`` per
    field, depth first: the flags `add_config_flags` adds."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner, optional = split_optional(hints[f.name])
        name = prefix + f.name
        if is_config(inner):
            if optional:
                yield "switch", name, inner
            yield from config_paths(inner, name + ".")
        else:
            yield "value", name, hints[f.name]


def _node(tree: dict, keys: list[str], source: str | None) -> dict:
    """The dict at ``keys`` in ``tree``, made when absent; ``None`` becomes a `_Fresh` dict."""
    node = tree
    for i, k in enumerate(keys):
        child = node.get(k, _MISSING)
        if child is _MISSING:
            child = node[k] = {}
        elif child is None:
            child = node[k] = _Fresh()
        elif not isinstance(child, dict):
            raise ConfigError(f"{source or 'config'}: {'.'.join(keys[:i + 1])} must be an object or null, "
                              f"got {show(child)}")
        node = child
    return node


def read_config_file(path: str) -> dict:
    """The JSON object in ``path``; a missing file, bad JSON or a repeated key is a `ConfigError`."""

    def no_repeats(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ConfigError(f"{path}: key {key!r} appears twice in one object")
            seen.add(key)
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f, object_pairs_hook=no_repeats)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: bad JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a JSON object of config fields, got {type(values).__name__}")
    return values


def config_from_args(cls, args: argparse.Namespace, *, base=None, config_file: str | None = None):
    """The config of ``cls``: defaults (or ``base``) < JSON ``config_file`` < flags."""
    values = read_config_file(config_file) if config_file else {}
    given = [(kind, name, tp, raw) for kind, name, tp in config_paths(cls)
             if (raw := getattr(args, switch_dest(name) if kind == "switch" else name, None)) is not None]
    for kind, name, _, state in given:
        if kind != "switch":
            continue
        keys = name.split(".")
        if state == "off":
            clash = [f"{n}.{r}" if k == "switch" else n for k, n, _, r in given if n.startswith(name + ".")]
            if clash:
                raise ConfigError(f"--{name}.off contradicts --{clash[0]}: drop one of them")
            _node(values, keys[:-1], config_file)[keys[-1]] = None
        else:
            _node(values, keys, config_file)
    for kind, name, tp, raw in given:
        if kind == "value":
            keys = name.split(".")
            _node(values, keys[:-1], config_file)[keys[-1]] = parse_text(raw, tp, f"--{name}")
    return build_config(cls, values, base=base, source=config_file)


def config_to_dict(config) -> dict:
    """A JSON-ready nested dict of a config (what ``--config`` reads back)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
