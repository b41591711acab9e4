"""The evaluation's PNG: a panel per metric, bars with their confidence intervals."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from rlhf_jax.evaluate.output import parent

if TYPE_CHECKING:
    from rlhf_jax.evaluate.report import EvaluationReport


def plot_report(report: "EvaluationReport", path: str, *, metrics: Sequence[str] | None = None) -> str:
    """Write ``report``'s PNG to ``path``: a panel per metric (every metric by default), a bar per
    model with its confidence interval as error bar. With prompt groups, each panel has a cluster
    of bars (one per model) for all prompts, then one cluster per group. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(report.metrics if metrics is None else metrics)
    for k in metrics:
        report._check(report.models[0], k)
    clusters = [("all", report.summary)] + [(g, report.by_group[g]) for g in report.group_names]
    n_models, grouped = len(report.models), len(clusters) > 1
    cols = min(4 if not grouped else 3, max(1, len(metrics)))
    rows = math.ceil(len(metrics) / cols)
    width = 3.2 if not grouped else 1.0 + 0.35 * n_models * len(clusters)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.0 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bar = 0.8 / n_models if grouped else 0.8
    for ax, k in zip(axes.flat, metrics):
        for i, m in enumerate(report.models):
            ivs = [src[m][k] for _, src in clusters]
            x = np.arange(len(clusters)) + (i - (n_models - 1) / 2) * bar if grouped else np.array([i])
            means = np.array([iv.mean for iv in ivs])
            err = np.array([[iv.mean - iv.low for iv in ivs], [iv.high - iv.mean for iv in ivs]])
            err = np.maximum(np.nan_to_num(err), 0.0)  # a percentile interval may miss the mean
            ax.bar(x, means, width=bar, yerr=err, capsize=3, color=colors[i % len(colors)], label=m)
        if grouped:
            ax.set_xticks(np.arange(len(clusters)), [c for c, _ in clusters], rotation=30 if len(clusters) > 3 else 0)
        else:
            ax.set_xticks(np.arange(n_models), report.models, rotation=30 if n_models > 3 else 0)
        ax.set_title(k)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    if grouped:
        axes.flat[0].legend(fontsize=7)
    pct = round(100 * report.settings.get("confidence", 0.95))
    by = f", by group ({len(clusters) - 1} groups)" if grouped else ""
    fig.suptitle(f"mean and {pct}% CI ({len(report.prompts)} prompts x {report.samples_per_prompt} samples){by}")
    fig.tight_layout()
    parent(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
