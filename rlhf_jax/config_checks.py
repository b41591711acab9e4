"""Value checks for config dataclasses, and `ConfigError`, the one error type of a bad config.

A config validates its values in ``__post_init__`` with these helpers; each names the config
class and the field in one line, ``ClassName.field must be ..., got ...``, and raises
`ConfigError` (a ``ValueError``)::

    def __post_init__(self):
        positive(self, "learning_rate")                    # > 0
        at_least(self, "batch_size", 1, integer=True)      # an integer >= 1
        at_least(self, "top_k", 1, integer=True, optional=True)  # None allowed
        in_range(self, "top_p", 0, 1, low_open=True)       # (0, 1]
        in_range(self, "dropout", 0, 1, high_open=True)    # [0, 1)
        one_of(self, "init", ("kaiming", "gaussian"))
        multiple_of(self, "batch_size", "mini_batch_size")  # batch_size % mini_batch_size == 0
        check(self, "targets", bool(self.targets), "non-empty")  # anything else

Numeric checks refuse what is not a real number (``bool`` included, and NaN, which compares
false with everything), so a string that reached a config from a hand-written dict fails here
with its field named, not deep inside an optimizer; ``integer=True`` also refuses non-integers
(NumPy integers are integers). ``optional=True`` lets ``None`` through.

`rlhf_jax.config_args` raises `ConfigError` too (unknown keys, wrong types, bad flags), and wraps
any ``ValueError`` a config raises while it is built from a JSON file or flags, so a command line
catches ``ConfigError`` alone to print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config value, key, type or flag that is not allowed; the message is one line."""


def _value(config: Any, name: str) -> Any:
    return getattr(config, name)


def fail(config: Any, name: str, must: str) -> None:
    """Raise ``ConfigError("ClassName.name must be <must>, got <its value>")``."""
    raise ConfigError(f"{type(config).__name__}.{name} must be {must}, got {_value(config, name)!r}")


def check(config: Any, name: str, ok: bool, must: str) -> None:
    """Fail with ``must`` (e.g. ``"non-empty"``) unless ``ok``."""
    if not ok:
        fail(config, name, must)


def _number(config: Any, name: str, must: str, optional: bool, integer: bool) -> float | None:
    v = _value(config, name)
    if v is None and optional:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, kind) or math.isnan(float(v)):
        fail(config, name, f"{'an integer' if integer else 'a number'} {must}" + (" or None" if optional else ""))
    return float(v)


def positive(config: Any, name: str, *, integer: bool = False, optional: bool = False) -> None:
    """``value > 0``."""
    at_least(config, name, 0, strict=True, integer=integer, optional=optional)


def at_least(config: Any, name: str, low: float, *, strict: bool = False, integer: bool = False,
             optional: bool = False) -> None:
    """``value >= low`` (``> low`` when ``strict``)."""
    must = f"{'>' if strict else '>='} {low}"
    v = _number(config, name, must, optional, integer)
    if v is not None and not (v > low if strict else v >= low):
        fail(config, name, must + (" or None" if optional else ""))


def in_range(config: Any, name: str, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False, integer: bool = False, optional: bool = False) -> None:
    """``low <= value <= high``; an open end excludes its bound. The message writes the interval
    as ``in (0, 1]``."""
    must = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    v = _number(config, name, must, optional, integer)
    if v is None:
        return
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):
        fail(config, name, must + (" or None" if optional else ""))


def one_of(config: Any, name: str, choices: Sequence[Any]) -> None:
    """``value in choices`` (compared by equality and type, so ``True`` is not ``1``)."""
    v = _value(config, name)
    if not any(v == c and type(v) is type(c) for c in choices):
        fail(config, name, "one of " + ", ".join(repr(c) for c in choices))


def multiple_of(config: Any, name: str, of: str) -> None:
    """``value % other == 0`` for the integer fields ``name`` and ``of`` (> 0)."""
    v, base = _value(config, name), _value(config, of)
    ints = all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (v, base))
    if not (ints and base > 0 and v % base == 0):
        fail(config, name, f"a multiple of {of} ({base!r})")
