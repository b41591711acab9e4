"""Statistics of an evaluation: confidence intervals clustered by prompt, and distinct-n.

Samples of the same prompt are correlated (a toxic prompt gives toxic completions), so every
interval here treats the *prompt* as the independent unit: the ``S`` samples of a prompt are
averaged first, and the interval is taken over the ``P`` per-prompt means.

- Normal approximation (the default)::

      m_p = mean_s x[p, s],   mean = mean_p m_p,   SE = std(m_p, ddof=1) / sqrt(P),
      CI  = mean -/+ z * SE,  z = Phi^-1((1 + confidence) / 2)  (1.96 for 95 %).

- Percentile bootstrap over prompts: resample ``P`` prompts with replacement, recompute the
  mean, take the ``(1 -/+ confidence) / 2`` quantiles.

- distinct-n (not a mean): normal approximation with the delete-one-prompt jackknife standard
  error.

A difference between two models evaluated on the same prompts is *paired*: the interval is that of
the per-prompt differences ``d_p = m_p(after) - m_p(before)``; for distinct-n the jackknife leaves
the same prompt out of both models.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable, NamedTuple, Sequence

import numpy as np

CI_METHODS = ("normal", "bootstrap")


class Interval(NamedTuple):
    """A point estimate with its confidence interval."""

    mean: float
    """The estimate (for a per-sample metric, the mean over all samples)."""
    low: float
    """Lower end of the interval (NaN when it cannot be estimated, e.g. a single prompt)."""
    high: float
    """Upper end of the interval."""
    se: float
    """Standard error over prompts (for the bootstrap: the standard deviation of the draws)."""
    n: int
    """Number of prompts (the clusters)."""


def z_value(confidence: float) -> float:
    """``Phi^-1((1 + confidence) / 2)``: 1.959964 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0)


def _per_prompt(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"values must be [P, S] with P, S >= 1, got shape {np.shape(values)}")
    return x.mean(axis=1)


def normal_interval(values: np.ndarray, *, confidence: float = 0.95) -> Interval:
    """Mean of ``values`` ``[P, S]`` (or ``[P]``) with the normal-approximation interval over
    the per-prompt means (see the module docstring)."""
    m = _per_prompt(values)
    p = m.shape[0]
    mean = float(m.mean())
    if p < 2:
        return Interval(mean, float("nan"), float("nan"), float("nan"), p)
    se = float(m.std(ddof=1) / np.sqrt(p))
    half = z_value(confidence) * se
    return Interval(mean, mean - half, mean + half, se, p)


def bootstrap_indices(n_prompts: int, *, samples: int, seed: int) -> np.ndarray:
    """``[samples, n_prompts]`` prompt indices drawn with replacement (NumPy PCG64, ``seed``)."""
    return np.random.default_rng(seed).integers(0, n_prompts, size=(samples, n_prompts))


def bootstrap_interval(stat: Callable[[np.ndarray], np.ndarray], n_prompts: int, *,
                       confidence: float = 0.95, samples: int = 1000, seed: int = 0) -> Interval:
    """Percentile bootstrap over prompts.

    ``stat(idx) -> [D]`` evaluates the statistic on ``D`` resamples at once: ``idx`` is
    ``[D, P]`` prompt indices (with repeats); ``stat(arange(P)[None])[0]`` is the point estimate.
    ``se`` is the standard deviation of the bootstrap draws. Suits means of per-prompt values.
    """
    z_value(confidence)  # validates
    est = float(stat(np.arange(n_prompts)[None])[0])
    if n_prompts < 2:
        return Interval(est, float("nan"), float("nan"), float("nan"), n_prompts)
    draws = np.asarray(stat(bootstrap_indices(n_prompts, samples=samples, seed=seed)), np.float64)
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(est, float(lo), float(hi), float(np.std(draws, ddof=1)), n_prompts)


def mean_interval(values: np.ndarray, *, method: str = "normal", confidence: float = 0.95,
                  samples: int = 1000, seed: int = 0) -> Interval:
    """Mean of a per-sample metric ``[P, S]`` with a prompt-clustered interval (``method``:
    ``"normal"`` or ``"bootstrap"``)."""
    if method == "normal":
        return normal_interval(values, confidence=confidence)
    if method == "bootstrap":
        m = _per_prompt(values)
        return bootstrap_interval(lambda idx: m[idx].mean(axis=-1), m.shape[0], confidence=confidence,
                                  samples=samples, seed=seed)
    raise ValueError(f"ci method must be one of {CI_METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------- distinct-n


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """The ``n``-grams of one sequence (none when it is shorter than ``n``)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


class NgramCounts(NamedTuple):
    """Per-prompt n-gram sets: distinct-n over all prompts, and with each prompt left out."""

    totals: np.ndarray
    """``[P]`` number of n-grams in the completions of each prompt (repeats counted)."""
    members: np.ndarray
    """``[P, G]`` bool, whether prompt ``p``'s completions contain n-gram ``g`` (``G`` distinct
    n-grams over everything)."""

    def distinct(self) -> float:
        """Unique / total n-grams over every prompt; 0 when there are none."""
        total = int(self.totals.sum())
        return self.members.shape[1] / total if total else 0.0

    def subset(self, prompts: np.ndarray) -> "NgramCounts":
        """The counts of ``prompts`` (indices) alone: n-grams none of them has are dropped."""
        members = self.members[np.asarray(prompts, np.int64)]
        return NgramCounts(self.totals[np.asarray(prompts, np.int64)], members[:, members.any(axis=0)])

    def leave_one_out(self) -> np.ndarray:
        """``[P]``: distinct-n with prompt ``p``'s completions removed (for the jackknife).

        Removing prompt ``p`` loses the n-grams that only ``p`` has and ``totals[p]`` n-grams."""
        only_here = self.members & (self.members.sum(axis=0) == 1)[None, :]
        unique = self.members.shape[1] - only_here.sum(axis=1)
        totals = self.totals.sum() - self.totals
        return np.where(totals > 0, unique / np.maximum(totals, 1), 0.0)


def ngram_counts(sequences: Sequence[Sequence[Sequence]], n: int) -> NgramCounts:
    """Count the ``n``-grams of ``sequences[p][s]`` (token lists of sample ``s`` of prompt ``p``).
    N-grams never cross the boundary between two completions."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index: dict[tuple, int] = {}
    rows, totals = [], []
    for samples in sequences:
        seen: set[int] = set()
        total = 0
        for seq in samples:
            grams = ngrams(list(seq), n)
            total += len(grams)
            seen.update(index.setdefault(g, len(index)) for g in grams)
        rows.append(seen)
        totals.append(total)
    members = np.zeros((len(rows), len(index)), bool)
    for p, seen in enumerate(rows):
        members[p, list(seen)] = True
    return NgramCounts(np.asarray(totals, np.int64), members)


def jackknife_interval(estimate: float, leave_one_out: np.ndarray, *, confidence: float = 0.95) -> Interval:
    """Normal-approximation interval with the delete-one-prompt jackknife standard error
    (Efron & Tibshirani 1993, ch. 11), for statistics that are not means (distinct-n)::

        SE = sqrt((P - 1) / P * sum_p (theta_(p) - mean_p theta_(p))^2),   CI = theta -/+ z * SE.

    (The bootstrap does not suit distinct-n: a prompt drawn twice doubles the total n-grams but
    not the unique ones, which biases every resample downwards.)
    """
    loo = np.asarray(leave_one_out, np.float64)
    p = loo.shape[0]
    if p < 2:
        return Interval(float(estimate), float("nan"), float("nan"), float("nan"), p)
    se = float(np.sqrt((p - 1) / p * np.sum(np.square(loo - loo.mean()))))
    half = z_value(confidence) * se
    return Interval(float(estimate), estimate - half, estimate + half, se, p)


def distinct_n(sequences: Sequence[Sequence], n: int) -> float:
    """Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models"): number of unique ``n``-grams / total number of ``n``-grams over all
    ``sequences`` (token lists; n-grams never cross two sequences). 0 when there is no n-gram."""
    return ngram_counts([[s] for s in sequences], n).distinct()
