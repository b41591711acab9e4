"""Paired before/after differences between two models of one :class:`EvaluationReport`."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rlhf_jax.evaluate.report import EvaluationReport, is_corpus_metric
from rlhf_jax.evaluate.stats import Interval, jackknife_interval, mean_interval


class Difference(NamedTuple):
    """``after - before`` for one metric."""

    metric: str
    before: float
    """Estimate for the ``before`` model."""
    after: float
    """Estimate for the ``after`` model."""
    diff: Interval
    """``after - before`` with its paired confidence interval."""
    ratio: float
    """``after / before``, e.g. toxicity after <= 0.5 * before; NaN when ``before`` is 0 or the
    metric can be negative (a normalised reward, a gold score: see
    :meth:`EvaluationReport.nonnegative`), where a ratio means nothing."""

    @property
    def significant(self) -> bool:
        """Whether the interval of the difference excludes 0."""
        return bool(self.diff.low > 0 or self.diff.high < 0)


def compare(report: EvaluationReport, before: str = "sft", after: str = "ppo", *,
            group: str | None = None) -> dict[str, Difference]:
    """Per-metric differences ``after - before`` with confidence intervals, over every prompt or
    over the prompts of ``group``.

    Both models answered the same prompts, so the interval is *paired by prompt*: for a
    per-sample metric it is the interval (the report's method: normal or bootstrap) of the
    per-prompt differences ``d_p = mean_s x_after[p, s] - mean_s x_before[p, s]``; for distinct-n
    and the collapse diagnostics the jackknife leaves the same prompt out of both models. Pairing
    removes the prompt-to-prompt variance that the two models share, so this interval is usually
    narrower than the two separate ones suggest. ``ratio`` is given only for metrics that cannot
    be negative (:meth:`EvaluationReport.nonnegative`).

    Returns:
      ``{metric: Difference}`` in the report's metric order.
    """
    report._check(before)
    report._check(after)
    idx = report.group_indices(group)
    s = report.settings
    kw = dict(confidence=s.get("confidence", 0.95), samples=s.get("bootstrap_samples", 1000), seed=s.get("seed", 0))
    out = {}
    for k in report.metrics:
        if is_corpus_metric(k):
            b, lb = report.corpus_statistic(before, k, idx)
            a, la = report.corpus_statistic(after, k, idx)
            diff = jackknife_interval(a - b, la - lb, confidence=kw["confidence"])
        else:
            xb, xa = report.values[before][k][idx], report.values[after][k][idx]
            b, a = float(xb.mean()), float(xa.mean())
            diff = mean_interval(xa.mean(axis=1) - xb.mean(axis=1), method=s.get("ci", "normal"), **kw)
        ratio = a / b if b != 0 and report.nonnegative(k) else math.nan
        out[k] = Difference(k, float(b), float(a), diff, ratio)
    return out


def format_comparison(diffs: dict[str, Difference], before: str = "before", after: str = "after") -> str:
    """A Markdown table of :func:`compare`'s result."""
    lines = [f"| metric | {before} | {after} | {after} - {before} (CI) | {after} / {before} |", "|---|---|---|---|---|"]
    for k, d in diffs.items():
        ci = "" if np.isnan(d.diff.low) else f" [{d.diff.low:+.3f}, {d.diff.high:+.3f}]"
        ratio = "" if np.isnan(d.ratio) else f"{d.ratio:.3f}"
        lines.append(f"| {k} | {d.before:.3f} | {d.after:.3f} | {d.diff.mean:+.3f}{ci} | {ratio} |")
    return "\n".join(lines)
