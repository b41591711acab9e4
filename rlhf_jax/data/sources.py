"""Rows from where users keep them: JSONL, a JSON list, Parquet, a folder written by ``datasets``'
``save_to_disk``, a ``datasets.Dataset`` / ``DatasetDict`` or a list of dicts.

Every row keeps where it came from (``Rows.where(i)``: ``data.jsonl:12`` for line 12 of a JSONL
file, ``data.parquet[3]`` for the row at index 3 elsewhere), so that errors further down name it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Sequence

from rlhf_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows of a dataset with their origin."""

    rows: tuple[Mapping[str, Any], ...]
    """The rows, as dicts."""
    source: str
    """The file or folder path, or ``<datasets.Dataset>`` / ``<rows>`` for in-memory data."""
    lines: tuple[int, ...] | None = None
    """1-based line number of each row in a JSONL file; ``None`` for other sources."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    def where(self, i: int) -> str:
        """Where row ``i`` (0-based) lives: ``file.jsonl:LINE`` or ``source[i]``."""
        if self.lines is not None:
            return f"{self.source}:{self.lines[i]}"
        return f"{self.source}[{i}]"


def read_jsonl(path: str) -> Rows:
    """The JSON objects of a JSONL file with their line numbers (blank lines skipped); a line that
    is not UTF-8, not JSON or not an object raises :class:`DataError` naming the file and line."""
    rows, lines = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(obj).__name__}")
            rows.append(obj)
            lines.append(lineno)
    return Rows(tuple(rows), path, tuple(lines))


def _json(path: str) -> Rows:
    """A ``.json`` file: a JSON list of objects, or JSON lines (what ``Dataset.to_json`` writes)."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        return read_jsonl(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from e
    rows = Rows(tuple(data), path)
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{rows.where(i)}: each item of the JSON list must be an object, got {type(obj).__name__}")
    return rows


def _parquet(path: str) -> Rows:
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    return Rows(tuple(table.to_pylist()), path)


def _pick_split(data, split: str | None, source: str):
    """A ``datasets.Dataset`` from a Dataset or a DatasetDict and ``split``."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        names = sorted(data)
        if split is None:
            if len(names) == 1:
                return data[names[0]]
            raise DataError(f"{source}: a DatasetDict with splits {names}: choose one with --split (split=...)")
        if split not in data:
            raise DataError(f"{source}: no split {split!r}; the splits are {names} (--split)")
        return data[split]
    if split is not None:
        raise DataError(f"{source}: split={split!r} given, but this source is a single dataset with no splits "
                        "(--split applies to a DatasetDict or a save_to_disk folder of one)")
    return data


def _folder(path: str, split: str | None) -> Rows:
    import datasets

    marks = ("dataset_dict.json", "state.json", "dataset_info.json")
    if not any(os.path.isfile(os.path.join(path, m)) for m in marks):
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk (no dataset_dict.json "
                        "or state.json); pass a .jsonl, .json or .parquet file, or such a folder")
    data = datasets.load_from_disk(path)
    return Rows(tuple(_pick_split(data, split, path).to_list()), path)


def load_rows(data: Any, *, split: str | None = None) -> Rows:
    """Read a dataset's rows.

    Args:
      data: a path (``.jsonl``, ``.json`` list or lines, ``.parquet``, or a ``save_to_disk``
        folder), a ``datasets.Dataset`` or ``DatasetDict``, a list of dicts, or :class:`Rows`
        (returned as is).
      split: the split of a ``DatasetDict`` (a folder or an object); not allowed for a single
        dataset. A DatasetDict with one split needs none.

    Raises:
      DataError: naming the file (and line) that cannot be read.
    """
    import datasets

    if isinstance(data, Rows):
        return data
    if isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
        name = "<datasets.DatasetDict>" if isinstance(data, datasets.DatasetDict) else "<datasets.Dataset>"
        return Rows(tuple(_pick_split(data, split, name).to_list()), name)
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isdir(path):
            return _folder(path, split)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file or folder (rlhf_jax never downloads datasets: pass a local "
                            ".jsonl, .json, .parquet file or a save_to_disk folder)")
        if split is not None:
            raise DataError(f"{path}: split={split!r} given for a single file (--split applies to a "
                            "save_to_disk folder holding a DatasetDict)")
        ext = os.path.splitext(path)[1].lower()
        readers = {".jsonl": read_jsonl, ".json": _json, ".parquet": _parquet}
        if ext not in readers:
            raise DataError(f"{path}: unknown extension {ext!r}; expected .jsonl, .json or .parquet "
                            "(or a save_to_disk folder)")
        return readers[ext](path)
    if isinstance(data, Sequence) or isinstance(data, Iterable):
        rows = tuple(data)
        out = Rows(rows, "<rows>")
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise DataError(f"{out.where(i)}: each row must be a dict, got {type(r).__name__}")
        if split is not None:
            raise DataError(f"<rows>: split={split!r} given for a list of rows (it has no splits)")
        return out
    raise DataError(f"cannot read rows from a {type(data).__name__}: pass a path, a datasets.Dataset or a list "
                    "of dicts")
