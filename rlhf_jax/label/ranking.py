"""One labeler's answer to one task, as the task form sends it: a rank or "F" per completion.

The form sends one value per completion: an integer rank (1 = best; equal numbers are a tie) or
``"F"`` (flagged: nonsense or irrelevant, not ranked). `parse_ranking` checks them and returns
standard competition ranks ("1224": tied completions share a rank and the next rank skips, as the
labeler instructions say), so ``[1, 3, 3, "F"]`` and ``[1, 2, 2, "F"]`` are the same answer
``(1, 2, 2, None)`` with completion 3 flagged. Only the order of the given numbers matters.
"""

from __future__ import annotations

from typing import Sequence


class LabelError(ValueError):
    """A request the labeling tool refuses: bad form input, an unknown task, a bad file."""


class TaskNotFound(LabelError):
    """A task id that is not one of the asking labeler's tasks (missing or someone else's)."""


FLAG = "F"


def parse_ranking(values: Sequence[str | int | None], *, where: str = "answer"
                  ) -> tuple[tuple[int | None, ...], tuple[int, ...]]:
    """Validate one answer and return ``(ranking, flagged)`` in the feedback module's format.

    Args:
      values: one entry per completion (in the order the ranks refer to): an integer 1..K or its
        decimal string, or ``"F"``/``"f"`` for a flagged completion. K = ``len(values)``.
      where: what to name in error messages, e.g. ``"task 12"``.

    Returns:
      ``ranking[i]``: competition rank of completion ``i`` among the unflagged ones (1 = best,
      ties share a rank, the next rank skips), None when flagged; ``flagged``: sorted indices
      of the flagged completions.

    Raises:
      LabelError: a value is missing, not a number or F, or out of range 1..K.
    """
    k = len(values)
    if k < 1:
        raise LabelError(f"{where}: no completions to rank")
    given: list[int | None] = []
    for i, v in enumerate(values):
        text = str(v).strip() if v is not None else ""
        if text.upper() == FLAG:
            given.append(None)
            continue
        if not text:
            raise LabelError(f"{where}: completion {i + 1} has no rank "
                             f"(give it a rank 1..{k} or flag it F)")
        if not text.isdecimal() or len(text) > 6:
            raise LabelError(f"{where}: completion {i + 1}: rank {text[:20]!r} is not a number "
                             f"1..{k} or F")
        rank = int(text)
        if not 1 <= rank <= k:
            raise LabelError(f"{where}: completion {i + 1}: rank {rank} is out of range 1..{k}")
        given.append(rank)
    ranked = [r for r in given if r is not None]
    ranking = tuple(None if r is None else 1 + sum(o < r for o in ranked) for r in given)
    flagged = tuple(i for i, r in enumerate(given) if r is None)
    return ranking, flagged
