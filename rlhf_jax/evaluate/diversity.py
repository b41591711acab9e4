"""Collapse diagnostics: how many *different* completions a model writes, and how often it gives
different prompts the same one.

distinct-n (unique / total n-grams) can rise while a model collapses: fewer, shorter completions
reuse the same small vocabulary. These statistics look at whole completions instead, compared as
exact strings (the texts of the report, special tokens as decoded). For completions ``c[p][s]``
of ``P`` prompts x ``S`` samples, ``N = P * S``, ``K`` distinct strings and ``n_k`` completions
equal to string ``k``:

- ``unique_ratio = K / N``: 1 when every completion differs, ``1 / N`` when all are one.
- ``cross_prompt_share = #{(p, s): c[p][s] equals some c[p'][s'] with p' != p} / N``: the share
  of completions that are also an answer to another prompt (a repeat among the samples of the
  same prompt does not count).
- ``entropy_bits = -sum_k (n_k / N) log2(n_k / N)``: entropy of the empirical distribution over
  the distinct completion strings, in **bits**, **not normalised**: 0 when all ``N`` are the same
  string, ``log2 N`` when all differ (so compare groups of equal size, or against their own
  ``log2 N``); ``2 ** entropy_bits`` is the effective number of distinct completions.
- ``all_identical_share = #{p: c[p][0] = ... = c[p][S-1]} / P``: prompts whose ``S`` samples are
  all the same string (only when ``S >= 2``).
- ``distinct_outputs = K`` (only under greedy decoding, where the ``S`` samples of a prompt are
  one output, so ``K`` is the number of distinct outputs over the ``P`` prompts).

The prompt is the independent unit, as everywhere in :mod:`rlhf_jax.evaluate`: every statistic
comes with its value with each prompt's ``S`` completions left out, for the delete-one-prompt
jackknife interval (:func:`rlhf_jax.evaluate.stats.jackknife_interval`). (For the mean
``all_identical_share`` the jackknife standard error is exactly the usual ``std / sqrt(P)``.) A
statistic of a *group* of prompts is the statistic of the group's completions alone, as if the
evaluation had held only those prompts.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

COLLAPSE_METRICS = ("unique_ratio", "cross_prompt_share", "entropy_bits", "all_identical_share", "distinct_outputs")
"""Every collapse diagnostic, in report order; see :func:`collapse_metrics` for which a report has."""

COLLAPSE_DESCRIPTIONS = {
    "unique_ratio": "distinct completion strings / completions",
    "cross_prompt_share": "share of completions identical to a completion for another prompt",
    "entropy_bits": "entropy of the distribution of completion strings, in bits (log2 of the completions "
                    "when all differ, 0 when all are one)",
    "all_identical_share": "share of prompts whose samples are all the same completion",
    "distinct_outputs": "number of distinct outputs (greedy decoding: one per prompt)",
}
"""One line per collapse diagnostic, for reports."""


def collapse_metrics(*, samples_per_prompt: int, greedy: bool) -> list[str]:
    """The diagnostics that mean something for this evaluation: ``all_identical_share`` needs
    ``S >= 2``; ``distinct_outputs`` is given under greedy decoding."""
    out = ["unique_ratio", "cross_prompt_share", "entropy_bits"]
    if samples_per_prompt >= 2:
        out.append("all_identical_share")
    if greedy:
        out.append("distinct_outputs")
    return out


def completion_ids(completions: Sequence[Sequence[str]]) -> np.ndarray:
    """``[P, S]`` int64: the index of each completion's string among the distinct strings
    (first occurrence order)."""
    index: dict[str, int] = {}
    rows = [[index.setdefault(t, len(index)) for t in row] for row in completions]
    lengths = {len(r) for r in rows}
    if not rows or len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"completions must be [P][S] with P, S >= 1 and the same S for every prompt, got "
                         f"{len(rows)} prompts with sample counts {sorted(lengths)}")
    return np.asarray(rows, np.int64)


class CompletionCounts(NamedTuple):
    """Which prompt wrote which distinct string how often, as sparse (prompt, string, count)
    triples; enough for every diagnostic and its leave-one-prompt-out values in O(N)."""

    prompt: np.ndarray
    """``[M]`` prompt index of each (prompt, string) pair."""
    string: np.ndarray
    """``[M]`` string index (0 .. K-1)."""
    count: np.ndarray
    """``[M]`` how many of the prompt's samples are that string."""
    n_prompts: int
    """P."""
    samples: int
    """S, samples per prompt."""

    @classmethod
    def from_ids(cls, ids: np.ndarray) -> "CompletionCounts":
        """From ``[P, S]`` string indices (:func:`completion_ids`; any integer labels)."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"ids must be [P, S] with P, S >= 1, got shape {ids.shape}")
        p, s = ids.shape
        _, k = np.unique(ids, return_inverse=True)  # relabel 0 .. K-1
        n_strings = int(k.max()) + 1
        key, count = np.unique(np.repeat(np.arange(p), s) * n_strings + k.reshape(-1), return_counts=True)
        return cls(key // n_strings, key % n_strings, count, p, s)

    def subset(self, prompts: np.ndarray) -> "CompletionCounts":
        """The counts of ``prompts`` (indices) alone, renumbered in the given order."""
        prompts = np.asarray(prompts, np.int64)
        new = np.full(self.n_prompts, -1, np.int64)
        new[prompts] = np.arange(len(prompts))
        keep = new[self.prompt] >= 0
        _, string = np.unique(self.string[keep], return_inverse=True)
        return CompletionCounts(new[self.prompt[keep]], string.reshape(-1), self.count[keep], len(prompts),
                                self.samples)

    # ------------------------------------------------------------------------- statistics

    def _totals(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``n_k`` (completions per string), prompts per string, N."""
        n = np.bincount(self.string, weights=self.count).astype(np.int64)
        prompts = np.bincount(self.string)
        return n, prompts, self.n_prompts * self.samples

    def _per_prompt(self, weights: np.ndarray) -> np.ndarray:
        return np.bincount(self.prompt, weights=weights, minlength=self.n_prompts)

    def statistic(self, metric: str) -> tuple[float, np.ndarray]:
        """``(estimate, [P] leave-one-prompt-out values)`` of one of :data:`COLLAPSE_METRICS`
        (NaN left-out values when ``P = 1``: nothing is left)."""
        if metric not in _STATISTICS:
            raise KeyError(f"no collapse diagnostic {metric!r} (known: {COLLAPSE_METRICS})")
        return _STATISTICS[metric](self)


def _nothing_left(c: CompletionCounts) -> np.ndarray:
    return np.full(c.n_prompts, np.nan)


def _xlog2x(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x * np.log2(np.maximum(x, 1)), 0.0)


def _unique_ratio(c: CompletionCounts) -> tuple[float, np.ndarray]:
    n, _, total = c._totals()
    # Leaving prompt q out loses the strings only q wrote (its count is the string's whole count).
    lost = c._per_prompt((n[c.string] == c.count).astype(np.float64))
    rest = total - c.samples
    return len(n) / total, ((len(n) - lost) / rest if rest else _nothing_left(c))


def _distinct_outputs(c: CompletionCounts) -> tuple[float, np.ndarray]:
    n, _, _ = c._totals()
    lost = c._per_prompt((n[c.string] == c.count).astype(np.float64))
    return float(len(n)), (len(n) - lost if c.n_prompts > 1 else _nothing_left(c))


def _entropy_bits(c: CompletionCounts) -> tuple[float, np.ndarray]:
    # H = -sum_k (n_k/N) log2(n_k/N) = log2 N - (1/N) sum_k n_k log2 n_k; leaving q out changes
    # only the n_k of q's strings, to n_k - count.
    n, _, total = c._totals()
    a = float(_xlog2x(n).sum())
    estimate = max(0.0, float(np.log2(total) - a / total))
    rest = total - c.samples
    if not rest:
        return estimate, _nothing_left(c)
    a_loo = a - c._per_prompt(_xlog2x(n[c.string]) - _xlog2x(n[c.string] - c.count))
    return estimate, np.maximum(0.0, np.log2(rest) - a_loo / rest)


def _cross_prompt_share(c: CompletionCounts) -> tuple[float, np.ndarray]:
    # A completion counts when its string was written for >= 2 prompts. Leaving q out: each of
    # q's strings has count - c_qk completions left, written for one prompt fewer.
    n, prompts, total = c._totals()
    shared = float(np.sum(n * (prompts >= 2)))
    rest = total - c.samples
    if not rest:
        return shared / total, _nothing_left(c)
    nk, pk = n[c.string], prompts[c.string]
    change = nk * (pk >= 2) - (nk - c.count) * (pk - 1 >= 2)
    return shared / total, (shared - c._per_prompt(change.astype(np.float64))) / rest


def _all_identical_share(c: CompletionCounts) -> tuple[float, np.ndarray]:
    same = (np.bincount(c.prompt, minlength=c.n_prompts) == 1).astype(np.float64)  # one distinct string
    p = c.n_prompts
    return float(same.mean()), ((same.sum() - same) / (p - 1) if p > 1 else _nothing_left(c))


_STATISTICS: dict[str, Callable[[CompletionCounts], tuple[float, np.ndarray]]] = {
    "unique_ratio": _unique_ratio,
    "cross_prompt_share": _cross_prompt_share,
    "entropy_bits": _entropy_bits,
    "all_identical_share": _all_identical_share,
    "distinct_outputs": _distinct_outputs,
}


# ----------------------------------------------------------------------------------- groups


def resolve_groups(groups: Callable[[str], str] | Sequence[str] | None, prompts: Sequence[str]) -> list[str] | None:
    """Group labels per prompt from ``groups``: ``None``, a function ``prompt -> label`` or one
    label per prompt. Raises one line naming the first bad label."""
    if groups is None:
        return None
    if callable(groups):
        labels = []
        for i, p in enumerate(prompts):
            try:
                labels.append(groups(p))
            except Exception as e:  # noqa: BLE001 - re-raised with the prompt that failed
                raise ValueError(f"groups: the group function failed on prompt {i} ({p!r}): "
                                 f"{type(e).__name__}: {e}") from None
    elif isinstance(groups, str):
        raise TypeError("groups must be a function prompt -> label or a list of one label per prompt, got a string")
    else:
        labels = list(groups)
        if len(labels) != len(prompts):
            raise ValueError(f"groups has {len(labels)} labels for {len(prompts)} prompts (one label per prompt)")
    for i, g in enumerate(labels):
        if not isinstance(g, str) or not g:
            raise ValueError(f"groups: the label of prompt {i} ({prompts[i]!r}) is {g!r}; labels must be "
                             "non-empty strings")
    return labels


def check_probabilities(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` unchanged if all lie in [0, 1], else an error naming the scorer and the rows."""
    bad = np.nonzero((values < 0) | (values > 1))[0]
    if bad.size:
        raise ValueError(f"scorer {name!r} must return 0/1 or a probability in [0, 1]; got "
                         f"{float(values[bad[0]])} at completions {bad[:10].tolist()}")
    return values
