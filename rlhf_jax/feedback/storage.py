"""Reading and writing feedback: JSONL files, `datasets.Dataset`, Parquet.

Reads are strict (raise the first `FeedbackError`) or lenient (skip each bad record and list it
in the returned `ValidationReport`). Besides the per-record checks of
`rlhf_jax.feedback.validate`, a read checks across records: a ranked file holds one record per
``prompt_id``, and a binary file holds at most one vote per (prompt, completion, labeler); the
later duplicate is the error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator, Sequence

import datasets
import pyarrow.parquet

from rlhf_jax.feedback.errors import FeedbackError, ValidationReport
from rlhf_jax.feedback.records import BinaryFeedback, PairRecord, RankedFeedback
from rlhf_jax.feedback.validate import KINDS, PARSERS, detect_kind

Record = RankedFeedback | BinaryFeedback | PairRecord

RANKED_FEATURES = datasets.Features({
    "prompt_id": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "completions": [datasets.Value("string")],
    "criterion": datasets.Value("string"),
    "instructions_id": datasets.Value("string"),
    "labels": [{"labeler": datasets.Value("string"), "ranking": [datasets.Value("int64")],
                "flagged": [datasets.Value("int64")]}],
})
BINARY_FEATURES = datasets.Features({
    "prompt_id": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "completion": datasets.Value("string"),
    "labeler": datasets.Value("string"),
    "thumbs": datasets.Value("string"),
})
PAIR_FEATURES = datasets.Features({
    "prompt_id": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "chosen": datasets.Value("string"),
    "rejected": datasets.Value("string"),
    "agreement": datasets.Value("float64"),
    "margin": datasets.Value("float64"),
})
_FEATURES = {"ranked": RANKED_FEATURES, "binary": BINARY_FEATURES, "pairwise": PAIR_FEATURES}


def _jsonl_objects(path: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object | FeedbackError)`` per non-blank line; blank -> (n, None)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, FeedbackError(f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                            file=path, line=lineno)
                continue
            if not text.strip():
                yield lineno, None
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, FeedbackError(f"invalid JSON: {e.msg} (column {e.colno})",
                                            file=path, line=lineno)


def _validate_stream(items: Iterable[tuple[int, Any]], *, source: str, kind: str,
                     strict: bool) -> tuple[tuple[Record, ...], ValidationReport]:
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"kind must be one of {KINDS} or 'auto', got {kind!r}")
    records: list[Record] = []
    errors: list[FeedbackError] = []
    blank = seen = 0
    first_line: dict[Any, int] = {}  # cross-record duplicate key -> line first seen
    for lineno, obj in items:
        if obj is None:
            blank += 1
            continue
        seen += 1
        try:
            if isinstance(obj, FeedbackError):
                raise obj
            if kind == "auto":
                kind = detect_kind(obj) or "auto"
                if kind == "auto":
                    raise FeedbackError("cannot tell the record kind (expected 'labels', "
                                        "'thumbs' or 'chosen'); pass kind explicitly",
                                        file=source, line=lineno)
            record = PARSERS[kind](obj, file=source, line=lineno)
            _check_duplicate(record, first_line, source=source, line=lineno)
        except FeedbackError as e:
            if strict:
                raise
            errors.append(e)
            continue
        records.append(record)
    report = ValidationReport(source=source, kind=kind, n_records=seen, n_valid=len(records),
                              blank_lines=blank, errors=tuple(errors))
    return tuple(records), report


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


def read_feedback(path: str | os.PathLike, *, kind: str = "auto",
                  strict: bool = True) -> tuple[tuple[Record, ...], ValidationReport]:
    """Read and validate a JSONL feedback file.

    Args:
      path: the JSONL file (one JSON object per line; blank lines are ignored and counted).
      kind: ``"ranked"``, ``"binary"``, ``"pairwise"`` or ``"auto"`` (decided by the first
        record's keys).
      strict: raise the first `FeedbackError`; when False, skip bad records and list them.

    Returns:
      ``(records, report)``; ``report.n_records == report.n_valid + report.n_skipped``.
    """
    path = os.fspath(path)
    return _validate_stream(_jsonl_objects(path), source=path, kind=kind, strict=strict)


def read_ranked(path: str | os.PathLike, *, strict: bool = True
                ) -> tuple[tuple[RankedFeedback, ...], ValidationReport]:
    """`read_feedback` for ranked feedback."""
    return read_feedback(path, kind="ranked", strict=strict)  # type: ignore[return-value]


def read_binary(path: str | os.PathLike, *, strict: bool = True
                ) -> tuple[tuple[BinaryFeedback, ...], ValidationReport]:
    """`read_feedback` for binary (thumbs up/down) feedback."""
    return read_feedback(path, kind="binary", strict=strict)  # type: ignore[return-value]


def read_pairwise(path: str | os.PathLike, *, strict: bool = True
                  ) -> tuple[tuple[PairRecord, ...], ValidationReport]:
    """`read_feedback` for pairwise records (either form)."""
    return read_feedback(path, kind="pairwise", strict=strict)  # type: ignore[return-value]


def records_from_dataset(ds: datasets.Dataset, *, kind: str, strict: bool = True,
                         source: str = "<dataset>"
                         ) -> tuple[tuple[Record, ...], ValidationReport]:
    """Validate the rows of a `datasets.Dataset` (errors name row index + 1 as ``line``)."""
    return _validate_stream(((i + 1, row) for i, row in enumerate(ds)), source=source,
                            kind=kind, strict=strict)


def _kind_of(records: Sequence[Record]) -> str:
    kinds = {type(r) for r in records}
    if len(kinds) > 1:
        raise TypeError(f"records of mixed kinds: {sorted(k.__name__ for k in kinds)}")
    cls = kinds.pop() if kinds else PairRecord
    return {RankedFeedback: "ranked", BinaryFeedback: "binary", PairRecord: "pairwise"}[cls]


def records_to_dataset(records: Sequence[Record]) -> datasets.Dataset:
    """A `datasets.Dataset` with one row per record and fixed features for its kind."""
    kind = _kind_of(records)
    rows = [r.to_dict() for r in records]
    if kind == "binary":
        rows = [{"prompt_id": None, **row} for row in rows]
    features = _FEATURES[kind]
    return datasets.Dataset.from_list(rows, features=features) if rows else \
        datasets.Dataset.from_dict({k: [] for k in features}, features=features)


def write_jsonl(records: Iterable[Record], path: str | os.PathLike) -> int:
    """Write records as JSONL (the exact on-disk shapes); returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def _extension(path: str) -> str:
    lower = path.lower()
    for ext in (".parquet", ".jsonl", ".json"):
        if lower.endswith(ext):
            return ext
    raise ValueError(f"cannot tell the format of {path!r}: use .parquet, .jsonl or .json")


def save_pairs(ds: datasets.Dataset, path: str | os.PathLike) -> None:
    """Save a pairs dataset as Parquet (``.parquet``) or JSONL (``.jsonl``/``.json``)."""
    path = os.fspath(path)
    if _extension(path) == ".parquet":
        ds.to_parquet(path)
    else:
        ds.to_json(path, lines=True, force_ascii=False)


def load_pairs(path: str | os.PathLike, *, strict: bool = True) -> datasets.Dataset:
    """Load a pairs dataset saved by `save_pairs` (by extension), validating every row.

    JSONL files may also be any pairwise file (including the prompt-as-shared-prefix form).
    Raises `FeedbackError` on the first bad row (``strict``), else skips bad rows.
    """
    path = os.fspath(path)
    if _extension(path) == ".parquet":
        rows = pyarrow.parquet.read_table(path).to_pylist()  # no `datasets` cache files
        records, _ = _validate_stream(((i + 1, row) for i, row in enumerate(rows)),
                                      source=path, kind="pairwise", strict=strict)
    else:
        records, _ = read_pairwise(path, strict=strict)
    return records_to_dataset(records)
