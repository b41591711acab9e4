"""From raw lines to validated records: JSONL decoding, then the checks across records.

A line of a JSONL file becomes an object, or a `FeedbackError` when it is

* not UTF-8 (a byte-order mark before line 1 is allowed and dropped),
* not JSON,
* nested deeper than Python's JSON parser can follow (arrays or objects inside each other
  about a thousand deep): an error, never a ``RecursionError``, so a lenient read skips it,
* an object in which a key appears twice (JSON would silently keep the last value); the error
  names the repeated key's path, e.g. ``labels[1].ranking``.

`validate_stream` then parses every object (`rlhf_jax.feedback.validate`) and checks the
records against each other:

* **Kind.** ``kind="auto"`` decides per record from its keys (`detect_kind`); the file's kind
  is the most common one (the first record's on a tie), and a record of another kind is an error
  that names the file's kind and its first line. One stray record costs that record only.
* **Prompt form.** A file holds text prompts or message-list prompts, not both (one Arrow
  column holds one type); the less common form is the error, as for kinds.
* **Duplicates.** A ranked file holds one record per ``prompt_id``; a binary file at most one
  vote per (prompt, completion, labeler); the later duplicate is the error.
* **Prompt ids.** In binary and pairwise files a ``prompt_id`` names one prompt: a later record
  giving the same id to another prompt is an error (it would pair answers of different prompts).
* **Empty.** A source with no record at all (empty, or blank lines only) is a `FeedbackError`
  in strict and lenient reads alike: there is no record to skip.

A strict read raises the error of the earliest line (after reading the whole source); a lenient
read skips each bad record and lists it in the `ValidationReport`.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Iterable, Iterator

from rlhf_jax.feedback.errors import FeedbackError, ValidationReport
from rlhf_jax.feedback.records import BinaryFeedback, PairRecord, RankedFeedback, is_conversational
from rlhf_jax.feedback.validate import KINDS, PARSERS, detect_kind

Record = RankedFeedback | BinaryFeedback | PairRecord


class _Repeated(dict):
    """A JSON object in which ``key`` appeared more than once."""

    key: str


def _path_of(root: Any, target: Any) -> str:
    """The field path (``labels[1]``) of the object ``target`` inside ``root`` (iterative)."""
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return ""


def decode_line(text: str, *, file: str, line: int) -> Any:
    """One JSON value, or a `FeedbackError` (invalid, too deep, or a repeated key)."""
    repeated: list[_Repeated] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            obj = _Repeated(obj)
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    obj.key = k
                    break
                seen.add(k)
            repeated.append(obj)
        return obj

    try:
        value = json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as e:
        return FeedbackError(f"invalid JSON: {e.msg} (column {e.colno})", file=file, line=line)
    except RecursionError:
        return FeedbackError("JSON nested too deeply to read (arrays or objects inside each other "
                             "beyond Python's recursion limit)", file=file, line=line)
    if repeated:
        where = _path_of(value, repeated[0])
        key = repeated[0].key
        return FeedbackError(f"key {key!r} appears twice in one object (JSON would keep only "
                             "the last value)", file=file, line=line,
                             field=f"{where}.{key}" if where else key)
    return value


def jsonl_objects(path: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object | FeedbackError)`` per non-blank line; blank -> (n, None)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, FeedbackError(f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                            file=path, line=lineno)
                continue
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                yield lineno, None
                continue
            yield lineno, decode_line(text, file=path, line=lineno)


def _majority(values: list[Any]) -> tuple[Any, int] | None:
    """The most common non-None value (the first seen on a tie) and its first index."""
    counts = collections.Counter(v for v in values if v is not None)
    if not counts:
        return None
    best = max(counts.values())
    first = next(i for i, v in enumerate(values) if v is not None and counts[v] == best)
    return values[first], first


def _form(record: Record) -> str:
    return "message-list" if is_conversational(record.prompt) else "text"


def validate_stream(items: Iterable[tuple[int, Any]], *, source: str, kind: str,
                    strict: bool) -> tuple[tuple[Record, ...], ValidationReport]:
    """Parse and check ``(line, object | FeedbackError | None)`` items (module docstring)."""
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"kind must be one of {KINDS} or 'auto', got {kind!r}")
    objects: list[tuple[int, Any]] = []
    blank = 0
    for lineno, obj in items:
        if obj is None:
            blank += 1
        else:
            objects.append((lineno, obj))
    if not objects:
        raise FeedbackError("holds no records (it is empty or has only blank lines)", file=source)
    errors: list[FeedbackError] = []
    file_kind, first, n_kind = kind, 0, len(objects)
    if kind == "auto":
        kinds = [None if isinstance(o, FeedbackError) else detect_kind(o) for _, o in objects]
        found = _majority(kinds)
        file_kind, first = (found[0], objects[found[1]][0]) if found else ("unknown", 0)
        n_kind = kinds.count(file_kind)
    parsed: list[tuple[int, Record]] = []
    for idx, (lineno, obj) in enumerate(objects):
        try:
            if isinstance(obj, FeedbackError):
                raise obj
            this = file_kind
            if kind == "auto":
                this = kinds[idx]
                if this is None:
                    raise FeedbackError("cannot tell the record kind (expected 'labels', 'thumbs' "
                                        "or 'chosen'); pass kind explicitly", file=source, line=lineno)
                if this != file_kind:
                    raise FeedbackError(
                        f"is {this} feedback by its keys, but this file holds {file_kind} feedback "
                        f"({n_kind} of {len(objects)} records, first on line {first}); a file holds "
                        "one kind", file=source, line=lineno)
            parsed.append((lineno, PARSERS[this](obj, file=source, line=lineno)))
        except FeedbackError as e:
            errors.append(e)
    records = _check_across(parsed, source, errors)
    errors.sort(key=lambda e: e.line or 0)
    if strict and errors:
        raise errors[0]
    report = ValidationReport(source=source, kind=file_kind, n_records=len(objects),
                              n_valid=len(records), blank_lines=blank, errors=tuple(errors))
    return records, report


def _check_across(parsed: list[tuple[int, Record]], source: str,
                  errors: list[FeedbackError]) -> tuple[Record, ...]:
    """The records that pass the checks across records; the others' errors go to ``errors``."""
    forms = [_form(r) for _, r in parsed]
    found = _majority(forms)  # type: ignore[arg-type]
    first_line: dict[Any, int] = {}  # duplicate key -> line first seen
    prompt_of: dict[str, tuple[Any, int]] = {}  # prompt_id -> (prompt, line first seen)
    kept: list[Record] = []
    for (line, record), form in zip(parsed, forms):
        try:
            if found and form != found[0]:
                main, at = found[0], parsed[found[1]][0]
                raise FeedbackError(f"is a {form} prompt, but this file's prompts are {main} "
                                    f"(first on line {at}); a file holds one prompt form",
                                    file=source, line=line, field="prompt")
            _check_prompt_id(record, prompt_of, source=source, line=line)
            _check_duplicate(record, first_line, source=source, line=line)
        except FeedbackError as e:
            errors.append(e)
            continue
        kept.append(record)
    return tuple(kept)


def _check_duplicate(record: Record, first_line: dict[Any, int], *, source: str,
                     line: int) -> None:
    if isinstance(record, RankedFeedback):
        key: Any = ("prompt_id", record.prompt_id)
        field, what = "prompt_id", f"duplicate prompt_id {record.prompt_id!r}"
    elif isinstance(record, BinaryFeedback):
        key = (record.prompt_id or record.prompt, record.completion, record.labeler)
        field, what = "labeler", (f"labeler {record.labeler!r} already judged this completion "
                                  "of this prompt")
    else:
        return
    if key in first_line:
        raise FeedbackError(f"{what} (first on line {first_line[key]})",
                            file=source, line=line, field=field)
    first_line[key] = line


def _check_prompt_id(record: Record, prompt_of: dict[str, tuple[Any, int]], *, source: str,
                     line: int) -> None:
    if isinstance(record, RankedFeedback) or record.prompt_id is None:
        return  # a ranked file's ids are unique already
    if record.prompt_id not in prompt_of:
        prompt_of[record.prompt_id] = (record.prompt, line)
    elif prompt_of[record.prompt_id][0] != record.prompt:
        raise FeedbackError(f"{record.prompt_id!r} names another prompt on line "
                            f"{prompt_of[record.prompt_id][1]}; one prompt_id, one prompt (its "
                            "answers would be paired with another prompt's)",
                            file=source, line=line, field="prompt_id")
