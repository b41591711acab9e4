"""Validation errors and the report of a lenient read.

Every malformed record becomes a `FeedbackError` that names the file, the line and the field.
A strict read raises the first one; a lenient read skips the record and lists it in a
`ValidationReport`, so that nothing is dropped without being counted.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


class FeedbackError(ValueError):
    """A malformed feedback record.

    Attributes:
      file: path (or name) of the source, e.g. ``"data/ranked.jsonl"`` or ``"<dataset>"``.
      line: 1-based line number in a JSONL file (row index + 1 for a `datasets.Dataset`),
        or None when the error concerns no single record.
      field: the offending field as a path into the record, e.g. ``"labels[1].ranking[2]"``;
        None when the record as a whole is bad (e.g. a line that is not JSON).
      reason: what is wrong, in words.
    """

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.reason = reason
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.file if self.file is not None else "<records>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.field is None and self.line is None:  # the source as a whole, e.g. an empty file
            return f"{where}: {self.reason}"
        what = f"field '{self.field}'" if self.field is not None else "record"
        return f"{where}: {what}: {self.reason}"

    def __reduce__(self):
        return (_rebuild_error, (self.reason, self.file, self.line, self.field))


def _rebuild_error(reason, file, line, field):
    return FeedbackError(reason, file=file, line=line, field=field)


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """What a read of one source kept and what it skipped."""

    source: str
    """File path (or name) of the source that was read."""

    kind: str
    """Record kind: ``"ranked"``, ``"binary"`` or ``"pairwise"``."""

    n_records: int
    """Non-blank lines (or dataset rows) seen; always ``n_valid + n_skipped``."""

    n_valid: int
    """Records that passed validation and were returned."""

    blank_lines: int = 0
    """Blank lines in a JSONL file; they hold no record and are ignored (but counted here)."""

    errors: tuple[FeedbackError, ...] = ()
    """One error per skipped record, in file order (the reason each record was skipped)."""

    @property
    def n_skipped(self) -> int:
        """Number of records skipped (one error each)."""
        return len(self.errors)

    @property
    def ok(self) -> bool:
        """True when no record was skipped."""
        return not self.errors

    def reasons(self) -> dict[str, int]:
        """Count of skipped records per offending field (``"<record>"`` for whole-record errors)."""
        counter = collections.Counter(e.field or "<record>" for e in self.errors)
        return dict(sorted(counter.items()))

    def summary(self) -> str:
        """A human-readable multi-line summary: counts, then one line per skipped record."""
        lines = [f"{self.source}: {self.kind} feedback: {self.n_records} records, "
                 f"{self.n_valid} valid, {self.n_skipped} skipped"
                 + (f", {self.blank_lines} blank lines" if self.blank_lines else "")]
        lines += [f"  skipped: {e}" for e in self.errors]
        return "\n".join(lines)
