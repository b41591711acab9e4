"""Reading and writing feedback: JSONL files, `datasets.Dataset`, Parquet.

Reads are strict (raise the first `FeedbackError`) or lenient (skip each bad record and list it
in the returned `ValidationReport`). Besides the per-record checks of
`rlhf_jax.feedback.validate`, a read checks the file's lines and the records against each other
(`rlhf_jax.feedback.stream`: repeated JSON keys, nesting, one kind and one prompt form per file,
duplicates, one prompt per ``prompt_id``, no empty file).

Datasets have fixed features per kind; records whose prompts are message lists get the
conversational features (`features_for`): ``prompt`` (and a pair's ``chosen`` / ``rejected``)
become lists of ``{"role", "content"}`` structs, as in TRL's conversational datasets.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import datasets
import pyarrow.parquet

from rlhf_jax.feedback.errors import ValidationReport
from rlhf_jax.feedback.records import BinaryFeedback, PairRecord, RankedFeedback, is_conversational
from rlhf_jax.feedback.stream import Record, jsonl_objects, validate_stream

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
MESSAGES_FEATURE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
"""A message list: ``[{"role": ..., "content": ...}, ...]`` (TRL's conversational format)."""


def features_for(kind: str, *, conversational: bool = False) -> datasets.Features:
    """The features of a dataset of ``kind`` records; with message-list prompts when
    ``conversational`` (then a pair's ``chosen`` / ``rejected`` are message lists too)."""
    features = dict(_FEATURES[kind])
    if conversational:
        for column in ("prompt", "chosen", "rejected"):
            if column in features:
                features[column] = MESSAGES_FEATURE
    return datasets.Features(features)


def read_feedback(path: str | os.PathLike, *, kind: str = "auto",
                  strict: bool = True) -> tuple[tuple[Record, ...], ValidationReport]:
    """Read and validate a JSONL feedback file.

    Args:
      path: the JSONL file (one JSON object per line; blank lines are ignored and counted).
      kind: ``"ranked"``, ``"binary"``, ``"pairwise"`` or ``"auto"`` (each record's kind from its
        keys; the most common one is the file's, records of another kind are errors).
      strict: raise the first `FeedbackError`; when False, skip bad records and list them.

    Returns:
      ``(records, report)``; ``report.n_records == report.n_valid + report.n_skipped``.

    Raises:
      FeedbackError: a bad record when ``strict`` (the earliest line); in both modes a file
        with no record.
      OSError: the file cannot be opened (e.g. ``FileNotFoundError``).
    """
    path = os.fspath(path)
    return validate_stream(jsonl_objects(path), source=path, kind=kind, strict=strict)


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
    return validate_stream(((i + 1, row) for i, row in enumerate(ds)), source=source,
                           kind=kind, strict=strict)


def _kind_of(records: Sequence[Record]) -> str:
    kinds = {type(r) for r in records}
    if len(kinds) > 1:
        raise TypeError(f"records of mixed kinds: {sorted(k.__name__ for k in kinds)}")
    cls = kinds.pop() if kinds else PairRecord
    return {RankedFeedback: "ranked", BinaryFeedback: "binary", PairRecord: "pairwise"}[cls]


def records_to_dataset(records: Sequence[Record]) -> datasets.Dataset:
    """A `datasets.Dataset` with one row per record and fixed features for its kind and prompt
    form (`features_for`); records mixing text and message-list prompts are a ``ValueError``."""
    kind = _kind_of(records)
    forms = {is_conversational(r.prompt) for r in records}
    if len(forms) > 1:
        raise ValueError("records mix text prompts and message-list prompts; a dataset column "
                         "holds one form")
    rows = [r.to_dict() for r in records]
    if kind == "binary":
        rows = [{"prompt_id": None, **row} for row in rows]
    features = features_for(kind, conversational=forms == {True})
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
    """Save a pairs dataset as Parquet (``.parquet``) or JSONL (``.jsonl``/``.json``).

    JSONL is written with Python's ``json`` (floats exactly, e.g. a margin of 4/3), not with
    ``Dataset.to_json``, whose pandas writer keeps 10 significant digits."""
    path = os.fspath(path)
    if _extension(path) == ".parquet":
        ds.to_parquet(path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in ds.to_list())


def load_pairs(path: str | os.PathLike, *, strict: bool = True) -> datasets.Dataset:
    """Load a pairs dataset saved by `save_pairs` (by extension), validating every row.

    JSONL files may also be any pairwise file (including the prompt-as-shared-prefix form).
    Raises `FeedbackError` on the first bad row (``strict``), else skips bad rows.
    """
    path = os.fspath(path)
    if _extension(path) == ".parquet":
        rows = pyarrow.parquet.read_table(path).to_pylist()  # no `datasets` cache files
        records, _ = validate_stream(((i + 1, row) for i, row in enumerate(rows)),
                                     source=path, kind="pairwise", strict=strict)
    else:
        records, _ = read_pairwise(path, strict=strict)
    return records_to_dataset(records)
