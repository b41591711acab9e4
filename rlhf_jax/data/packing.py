"""Packing for SFT: tokenised examples concatenated into rows of a fixed length.

Each row holds several examples one after the other, then padding. ``segment_ids`` is 1, 2, ...
for the examples of a row (0 on padding): the model attends only within a segment (a
block-diagonal causal mask) and positions restart at 0 in each segment, so a packed row computes
exactly what its examples compute alone (``Transformer.apply(..., segment_ids=...)``).

The loss mask of each segment's first token is 0: in a row, the token before it is the previous
example's last token, and nothing predicts an example's first token when it is alone either. With
that, the token-mean loss over all loss tokens of the packed rows (``lm_loss``: predictions from
``t`` scored against token ``t + 1`` where ``loss_mask[t + 1]``) equals the unpacked one on the same
examples. A per-row mean would not: rows hold different numbers of examples.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Literal, NamedTuple, Sequence

import numpy as np
from jaxtyping import Int


class PackedBatch(NamedTuple):
    """Packed SFT rows (padding at the right end of each row)."""

    input_ids: Int[np.ndarray, "B T"]
    """int32 token ids, ``pad_id`` on padding."""
    segment_ids: Int[np.ndarray, "B T"]
    """int32: 1, 2, ... per example of the row, 0 on padding."""
    positions: Int[np.ndarray, "B T"]
    """int32 position inside the segment (restarts at 0 in each, the padding run too, as
    :func:`rlhf_jax.model.positions_from_segments` counts)."""
    loss_mask: Int[np.ndarray, "B T"]
    """int32, 1 on the tokens the loss scores (never the first token of a segment)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackReport:
    """How the examples were packed."""

    examples: int
    """Examples given."""
    rows: int
    """Packed rows."""
    tokens: int
    """Real (non-padding) tokens in the rows."""
    length: int
    """Row length."""
    truncated: int = 0
    """Examples longer than a row, cut to the row's length (``overflow="truncate"``)."""
    skipped_too_long: int = 0
    """Examples longer than a row, left out (``overflow="skip"``)."""
    skipped_no_loss: int = 0
    """Examples left with no loss token (empty, or all their loss tokens cut off), left out."""
    rows_of: tuple[tuple[int, ...], ...] = ()
    """The example indices in each row, in row order."""

    @property
    def fill(self) -> float:
        """Share of the rows' slots holding real tokens."""
        return self.tokens / max(1, self.rows * self.length)

    def summary(self) -> str:
        return (f"packed {self.examples} examples into {self.rows} rows of {self.length} tokens "
                f"({self.fill:.1%} filled); truncated {self.truncated}, skipped {self.skipped_too_long} too long, "
                f"{self.skipped_no_loss} with no loss token")


def _placements(lengths: Sequence[int], length: int, strategy: str) -> list[list[int]]:
    """Example indices per row."""
    rows: list[list[int]] = []
    if strategy == "sequential":
        room = 0
        for i, n in enumerate(lengths):
            if not rows or n > room:
                rows.append([])
                room = length
            rows[-1].append(i)
            room -= n
        return rows
    # best-fit decreasing: longest first, each into the row with the least room that still fits it
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            r, room = len(rows) - 1, length - n
        else:
            room, r = free.pop(k)
            rows[r].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, r))
    return rows


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, length: int, pad_id: int,
                  strategy: Literal["best_fit", "sequential"] = "best_fit",
                  overflow: Literal["truncate", "skip"] = "truncate") -> tuple[PackedBatch, PackReport]:
    """Pack ``(input_ids, loss_mask)`` examples into rows of ``length`` tokens.

    Args:
      examples: token ids and a same-length 0/1 loss mask per example.
      length: tokens per row.
      pad_id: the id written on padding (never attended to, never scored).
      strategy: ``"best_fit"`` (longest example first, into the row with the least room that
        fits it: fewest rows) or ``"sequential"`` (in the given order, a new row when the next
        example does not fit).
      overflow: an example longer than ``length``: keep its first ``length`` tokens, or skip it.

    Returns:
      The rows and a :class:`PackReport` (truncated and skipped examples counted).
    """
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    if strategy not in ("best_fit", "sequential"):
        raise ValueError(f"strategy must be 'best_fit' or 'sequential', got {strategy!r}")
    if overflow not in ("truncate", "skip"):
        raise ValueError(f"overflow must be 'truncate' or 'skip', got {overflow!r}")
    kept: list[int] = []
    seqs: list[tuple[list[int], list[int]]] = []
    truncated = too_long = no_loss = 0
    for i, (ids, mask) in enumerate(examples):
        ids, mask = list(ids), list(mask)
        if len(ids) != len(mask):
            raise ValueError(f"example {i}: {len(ids)} tokens but a loss mask of {len(mask)}")
        if len(ids) > length:
            if overflow == "skip":
                too_long += 1
                continue
            ids, mask = ids[:length], mask[:length]
            truncated += 1
        mask = [0] + mask[1:] if mask else mask
        if not any(mask):
            no_loss += 1
            continue
        kept.append(i)
        seqs.append((ids, mask))
    rows = _placements([len(s[0]) for s in seqs], length, strategy)
    shape = (len(rows), length)
    input_ids = np.full(shape, pad_id, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    loss_mask = np.zeros(shape, np.int32)
    for r, members in enumerate(rows):
        at = 0
        for s, j in enumerate(members, start=1):
            ids, mask = seqs[j]
            n = len(ids)
            input_ids[r, at:at + n] = ids
            segment_ids[r, at:at + n] = s
            positions[r, at:at + n] = np.arange(n)
            loss_mask[r, at:at + n] = mask
            at += n
        positions[r, at:] = np.arange(length - at)
    report = PackReport(examples=len(examples), rows=len(rows), tokens=int((segment_ids > 0).sum()), length=length,
                        truncated=truncated, skipped_too_long=too_long, skipped_no_loss=no_loss,
                        rows_of=tuple(tuple(kept[j] for j in members) for members in rows))
    return PackedBatch(input_ids, segment_ids, positions, loss_mask), report
