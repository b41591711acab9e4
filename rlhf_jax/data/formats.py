"""Dataset formats: TRL's dataset types (language modeling, prompt-only, prompt-completion,
preference with an explicit or an implicit prompt), each standard (strings) or conversational
(message lists), detected from the fields and their types, or forced (``--format``).

A row's format comes from the fields it has (a field set to ``None`` counts as absent, as columns
unified by Arrow are): ``chosen`` + ``rejected`` is a preference (explicit with ``prompt``,
implicit without); ``prompt`` + ``completion`` is prompt-completion; ``messages`` or ``text`` is
language modeling (``messages`` first when both are there); ``prompt`` alone is prompt-only.
Other fields are ignored, except that a boolean ``label`` next to ``prompt`` + ``completion`` (TRL's
unpaired preference) is an error unless the format is forced. The fields of one row are all
strings (standard) or all message lists (conversational). Every row of a dataset must have the
same format as the first.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, NamedTuple

from rlhf_jax.data.errors import DataError
from rlhf_jax.data.sources import Rows

ROLES = ("system", "user", "assistant", "tool")
"""Message roles accepted in conversational data."""


class Kind(str, enum.Enum):
    """What a dataset is for (TRL's dataset "type")."""

    LANGUAGE_MODELING = "language_modeling"
    PROMPT_ONLY = "prompt_only"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"
    IMPLICIT_PREFERENCE = "implicit_preference"


_ALIASES = {"lm": Kind.LANGUAGE_MODELING, "implicit_prompt_preference": Kind.IMPLICIT_PREFERENCE}

EXPECTED = ("language modeling {text} or {messages}; prompt-only {prompt}; prompt-completion {prompt, completion}; "
            "preference {prompt, chosen, rejected}; implicit preference {chosen, rejected}; "
            "each field a string (standard) or a list of {role, content} messages (conversational)")
"""The formats, in words, for error messages."""


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """A dataset's kind and whether its fields are message lists."""

    kind: Kind
    """Language modeling, prompt-only, prompt-completion, preference or implicit preference."""
    conversational: bool
    """Fields are message lists (rendered with the chat template) rather than strings."""

    @property
    def name(self) -> str:
        """``standard_<kind>`` or ``conversational_<kind>``, e.g. ``conversational_prompt_completion``."""
        return f"{'conversational' if self.conversational else 'standard'}_{self.kind.value}"

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields a row of this format must have."""
        if self.kind is Kind.LANGUAGE_MODELING:
            return ("messages",) if self.conversational else ("text",)
        return {Kind.PROMPT_ONLY: ("prompt",), Kind.PROMPT_COMPLETION: ("prompt", "completion"),
                Kind.PREFERENCE: ("prompt", "chosen", "rejected"),
                Kind.IMPLICIT_PREFERENCE: ("chosen", "rejected")}[self.kind]

    def __str__(self) -> str:
        return self.name


FORMAT_NAMES = tuple(DatasetFormat(k, c).name for k in Kind for c in (False, True))
"""Every full format name (``--format`` also takes a kind alone, e.g. ``prompt_completion``)."""


def parse_format(name: str) -> tuple[Kind, bool | None]:
    """``--format`` value -> (kind, conversational or None when left to detection).

    Accepts a kind (``prompt_completion``) or a full name (``conversational_prompt_completion``).
    """
    text = name.strip().lower().replace("-", "_")
    style = None
    for prefix, conv in (("standard_", False), ("conversational_", True)):
        if text.startswith(prefix):
            text, style = text[len(prefix):], conv
    kind = _ALIASES.get(text)
    if kind is None:
        try:
            kind = Kind(text)
        except ValueError:
            raise DataError(f"unknown --format {name!r}; expected one of {[k.value for k in Kind]}, optionally "
                            "prefixed with standard_ or conversational_") from None
    return kind, style


def _present(row: Mapping[str, Any], key: str) -> bool:
    return row.get(key) is not None


def _kind_from_fields(row: Mapping[str, Any]) -> Kind | None:
    if _present(row, "chosen") and _present(row, "rejected"):
        return Kind.PREFERENCE if _present(row, "prompt") else Kind.IMPLICIT_PREFERENCE
    if _present(row, "prompt") and _present(row, "completion"):
        return Kind.PROMPT_COMPLETION
    if _present(row, "messages") or _present(row, "text"):
        return Kind.LANGUAGE_MODELING
    if _present(row, "prompt"):
        return Kind.PROMPT_ONLY
    return None


def row_format(row: Mapping[str, Any], *, where: str, force: str | None = None) -> DatasetFormat:
    """The format of one row (detected, or the forced one checked against the row).

    Raises:
      DataError: the row fits no format (naming ``where``, its fields and the formats expected), or
        mixes strings and message lists, or lacks a field of the forced format.
    """
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: a row must be an object with named fields, got {type(row).__name__}")
    if force is None:
        kind, style = _kind_from_fields(row), None
        if kind is None:
            fields = sorted(k for k in row if _present(row, k))
            nulls = "" if len(fields) == len(row) else f", null: {sorted(k for k in row if not _present(row, k))}"
            raise DataError(f"{where}: the row fits no dataset format (its fields: {fields}{nulls}); expected "
                            f"{EXPECTED}. Rename the fields, or force a format with --format")
        if kind is Kind.PROMPT_COMPLETION and isinstance(row.get("label"), bool):
            raise DataError(f"{where}: an unpaired preference row (prompt, completion, label), which no stage here "
                            "trains on; to use it as SFT data anyway (the label ignored), force --format "
                            "prompt_completion")
    else:
        kind, style = parse_format(force)
    if kind is Kind.LANGUAGE_MODELING:
        if style is None:
            style = _present(row, "messages")
        field = "messages" if style else "text"
        if not _present(row, field):
            raise DataError(f"{where}: no field {field!r} (format {DatasetFormat(kind, style).name})")
        fmt = DatasetFormat(kind, style)
        _check_types(row, fmt, where)
        return fmt
    fields = DatasetFormat(kind, False).fields
    missing = [f for f in fields if not _present(row, f)]
    if missing:
        raise DataError(f"{where}: no field {missing[0]!r}: a {kind.value} row has {list(fields)}"
                        + ("" if force is None else f" (--format {force})"))
    lists = [f for f in fields if isinstance(row[f], list)]
    if lists and len(lists) != len(fields):
        strings = [f for f in fields if f not in lists]
        raise DataError(f"{where}: field {lists[0]!r} is a message list but {strings[0]!r} is not: the fields of a "
                        "row are all strings (standard) or all message lists (conversational)")
    conv = bool(lists)
    if style is not None and style != conv:
        raise DataError(f"{where}: --format {force} expects {'message lists' if style else 'strings'} in "
                        f"{list(fields)}, got {'message lists' if conv else 'strings'}")
    fmt = DatasetFormat(kind, conv)
    _check_types(row, fmt, where)
    return fmt


def _check_types(row: Mapping[str, Any], fmt: DatasetFormat, where: str) -> None:
    for f in fmt.fields:
        if fmt.conversational:
            check_messages(row[f], where=where, field=f)
        elif not isinstance(row[f], str):
            raise DataError(f"{where}: field {f!r} must be a string, got {type(row[f]).__name__} ({EXPECTED})")


def check_messages(value: Any, *, where: str, field: str) -> list[dict]:
    """A validated message list: each message a dict with a role in :data:`ROLES` and string content.
    Keys set to ``None`` (Arrow's unified columns) are dropped from the returned copies."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r} must be a non-empty list of messages, got "
                        f"{'an empty list' if isinstance(value, list) else type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        at = f"{where}: field '{field}[{j}]'"
        if not isinstance(m, Mapping):
            raise DataError(f"{at} must be a {{role, content}} object, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise DataError(f"{at}: role {m.get('role')!r} is not one of {list(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{at}: content must be a string, got {type(m.get('content')).__name__}")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def detect_format(rows: Rows, *, force: str | None = None) -> DatasetFormat:
    """The format of a dataset: every row's format, which must all equal the first row's.

    Args:
      rows: from :func:`rlhf_jax.data.load_rows`.
      force: a ``--format`` value (a kind such as ``prompt_completion`` or a full name such as
        ``conversational_prompt_completion``); each row is then checked to have its fields.

    Raises:
      DataError: naming the source and the row that fits no format or differs from the first.
    """
    if len(rows) == 0:
        raise DataError(f"{rows.source}: no rows")
    first = row_format(rows[0], where=rows.where(0), force=force)
    for i in range(1, len(rows)):
        fmt = row_format(rows[i], where=rows.where(i), force=force)
        if fmt != first:
            raise DataError(f"{rows.where(i)}: this row is {fmt.name} but {rows.where(0)} is {first.name}; all rows "
                            "of a dataset must have one format (fix the row, or force one with --format)")
    return first


class Parts(NamedTuple):
    """A row's content by role in the stage: strings (standard) or message lists (conversational)."""

    prompt: Any = None
    """The prompt (prompt-only, prompt-completion, preference; implicit: the shared part)."""
    completion: Any = None
    """The completion (prompt-completion)."""
    chosen: Any = None
    """The preferred completion (preference)."""
    rejected: Any = None
    """The other completion (preference)."""
    sequence: Any = None
    """The whole text or conversation (language modeling)."""


def row_parts(row: Mapping[str, Any], fmt: DatasetFormat, *, where: str) -> Parts:
    """The parts of a row of format ``fmt`` (already checked by :func:`row_format`); an implicit
    preference is split into its shared prompt and the two completions."""
    get = (lambda f: check_messages(row[f], where=where, field=f)) if fmt.conversational else (lambda f: row[f])
    k = fmt.kind
    if k is Kind.LANGUAGE_MODELING:
        return Parts(sequence=get(fmt.fields[0]))
    if k is Kind.PROMPT_ONLY:
        return Parts(prompt=get("prompt"))
    if k is Kind.PROMPT_COMPLETION:
        p, c = get("prompt"), get("completion")
        if fmt.conversational and c[0]["role"] != "assistant":
            raise DataError(f"{where}: field 'completion[0]' has role {c[0]['role']!r}; a completion starts with an "
                            "assistant message")
        return Parts(prompt=p, completion=c)
    if k is Kind.PREFERENCE:
        p, c, r = get("prompt"), get("chosen"), get("rejected")
        for name, msgs in (("chosen", c), ("rejected", r)):
            if fmt.conversational and msgs[0]["role"] != "assistant":
                raise DataError(f"{where}: field '{name}[0]' has role {msgs[0]['role']!r}; with an explicit prompt, "
                                f"{name} starts with an assistant message")
        if c == r:
            raise DataError(f"{where}: chosen and rejected are identical")
        return Parts(prompt=p, chosen=c, rejected=r)
    c, r = get("chosen"), get("rejected")
    if c == r:
        raise DataError(f"{where}: chosen and rejected are identical")
    if fmt.conversational:
        p, c, r = split_shared_messages(c, r, where=where)
    else:
        p, c, r = split_shared_text(c, r)
    return Parts(prompt=p, chosen=c, rejected=r)


def split_shared_messages(chosen: list[dict], rejected: list[dict], *, where: str
                          ) -> tuple[list[dict], list[dict], list[dict]]:
    """Implicit conversational preference: the shared leading messages are the prompt, the rest of
    each (starting with an assistant message, normally the last one) the completions."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise DataError(f"{where}: chosen and rejected share no leading message, so there is no prompt; give the "
                        "prompt explicitly (prompt, chosen, rejected)")
    for name, rest in (("chosen", chosen[n:]), ("rejected", rejected[n:])):
        if not rest:
            raise DataError(f"{where}: {name} is the shared conversation itself (nothing after the "
                            f"{n} shared messages)")
        if rest[0]["role"] != "assistant":
            raise DataError(f"{where}: field '{name}[{n}]' (the first message after the {n} shared ones) has role "
                            f"{rest[0]['role']!r}; the completion must start with an assistant message")
    return chosen[:n], chosen[n:], rejected[n:]


def split_shared_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit standard preference: ``(prompt, chosen_rest, rejected_rest)``, the prompt being the
    longest common prefix cut back to just before its last run of whitespace, so that a word both
    completions start with ("S" of "Sure"/"Sorry") stays in them and each completion starts with the
    whitespace before it (what BPE tokenizers expect). Example::

        split_shared_text("Q: hot? A: Sure.", "Q: hot? A: Sorry.") == ("Q: hot? A:", " Sure.", " Sorry.")

    (The same rule as :func:`rlhf_jax.feedback.split_common_prefix`.)
    """
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = n
    while cut > 0 and not chosen[cut - 1].isspace():
        cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]
