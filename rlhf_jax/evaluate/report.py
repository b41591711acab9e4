"""The result of an evaluation: per-sample values, intervals, and JSON / Markdown / PNG output."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np

from rlhf_jax.evaluate.stats import Interval, NgramCounts, jackknife_interval, mean_interval, ngram_counts

CORPUS_METRICS = {"distinct_1": 1, "distinct_2": 2}
"""Metrics of the whole set of completions (not means of per-sample values), with their n."""


def completion_words(text: str, special_tokens: Sequence[str] = ()) -> list[str]:
    """Whitespace-separated words of ``text`` once every special token's text is removed (the
    units of distinct-n)."""
    for tok in special_tokens:
        if tok:
            text = text.replace(tok, " ")
    return text.split()


@dataclasses.dataclass
class EvaluationReport:
    """Models x metrics on the same prompts; build it with :func:`rlhf_jax.evaluate.evaluate`.

    ``values[model][metric]`` is ``[P, S]`` (prompt x sample) for the per-sample metrics;
    distinct-n (:data:`CORPUS_METRICS`) is computed here from the completions' words.
    ``summary[model][metric]`` is an :class:`~rlhf_jax.evaluate.stats.Interval`.
    """

    models: list[str]
    """Model names, in evaluation order."""
    metrics: list[str]
    """Metric names, in column order (per-sample metrics, then distinct-n)."""
    prompts: list[str]
    """The P prompt texts."""
    values: dict[str, dict[str, np.ndarray]]
    """``{model: {metric: [P, S] float64}}`` per-sample values."""
    completions: dict[str, list[list[str]]]
    """``{model: [P][S] texts}``, decoded as the scorers saw them."""
    settings: dict
    """How the evaluation ran (JSON-able); ``ci``, ``confidence``, ``bootstrap_samples``,
    ``seed`` and ``special_tokens`` are used by the statistics."""
    summary: dict[str, dict[str, Interval]] = dataclasses.field(default_factory=dict)
    """``{model: {metric: Interval}}``; computed from the values when left empty."""

    def __post_init__(self):
        self.values = {m: {k: np.asarray(v, np.float64) for k, v in d.items()} for m, d in self.values.items()}
        self._ngrams: dict[tuple[str, int], NgramCounts] = {}
        if not self.summary:
            self.summary = {m: {k: self.interval(m, k) for k in self.metrics} for m in self.models}

    # ------------------------------------------------------------------------------ statistics

    @property
    def samples_per_prompt(self) -> int:
        return len(self.completions[self.models[0]][0])

    def ngram_counts(self, model: str, n: int) -> NgramCounts:
        """Per-prompt word ``n``-gram sets of ``model``'s completions (cached)."""
        if (model, n) not in self._ngrams:
            special = self.settings.get("special_tokens", ())
            words = [[completion_words(t, special) for t in row] for row in self.completions[model]]
            self._ngrams[model, n] = ngram_counts(words, n)
        return self._ngrams[model, n]

    def _stat_kwargs(self) -> dict:
        s = self.settings
        return dict(confidence=s.get("confidence", 0.95), samples=s.get("bootstrap_samples", 1000),
                    seed=s.get("seed", 0))

    def interval(self, model: str, metric: str) -> Interval:
        """Estimate and interval of ``metric`` for ``model`` (see :mod:`rlhf_jax.evaluate.stats`)."""
        self._check(model, metric)
        if metric in CORPUS_METRICS:
            counts = self.ngram_counts(model, CORPUS_METRICS[metric])
            return jackknife_interval(counts.distinct(), counts.leave_one_out(),
                                      confidence=self.settings.get("confidence", 0.95))
        return mean_interval(self.values[model][metric], method=self.settings.get("ci", "normal"),
                             **self._stat_kwargs())

    def _check(self, model: str, metric: str | None = None) -> None:
        if model not in self.models:
            raise KeyError(f"no model {model!r} in the report (models: {self.models})")
        if metric is not None and metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} in the report (metrics: {self.metrics})")

    def means(self) -> dict[str, dict[str, float]]:
        """``{model: {metric: estimate}}``."""
        return {m: {k: iv.mean for k, iv in d.items()} for m, d in self.summary.items()}

    # ------------------------------------------------------------------------------ output

    def to_dict(self) -> dict:
        """Everything as JSON-able Python (NaN becomes ``None``)."""
        return _clean({
            "settings": self.settings, "models": self.models, "metrics": self.metrics, "prompts": self.prompts,
            "summary": {m: {k: iv._asdict() for k, iv in d.items()} for m, d in self.summary.items()},
            "samples": {m: {"completions": self.completions[m],
                            **{k: v.tolist() for k, v in self.values[m].items()}} for m in self.models},
        })

    def to_json(self, path: str) -> str:
        """Write :meth:`to_dict` to ``path``; returns the path."""
        _parent(path)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        return path

    @classmethod
    def from_json(cls, path: str) -> "EvaluationReport":
        """Read a report written by :meth:`to_json` (intervals are recomputed, identically)."""
        with open(path) as f:
            d = json.load(f)
        values = {m: {k: np.asarray(v, np.float64) for k, v in s.items() if k != "completions"}
                  for m, s in d["samples"].items()}
        return cls(models=d["models"], metrics=d["metrics"], prompts=d["prompts"], values=values,
                   completions={m: s["completions"] for m, s in d["samples"].items()}, settings=d["settings"])

    def format_interval(self, iv: Interval) -> str:
        """``mean ± half-width`` for a symmetric interval, else ``mean [low, high]``."""
        if math.isnan(iv.low):
            return f"{iv.mean:.3f}"
        half = (iv.high - iv.low) / 2
        if abs((iv.mean - iv.low) - half) <= 1e-9 * max(1.0, abs(half)):
            return f"{iv.mean:.3f} ± {half:.3f}"
        return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]"

    def table(self) -> str:
        """Markdown table, a row per model and a column per metric."""
        lines = ["| model | " + " | ".join(self.metrics) + " |", "|---" * (len(self.metrics) + 1) + "|"]
        for m in self.models:
            cells = [self.format_interval(self.summary[m][k]) for k in self.metrics]
            lines.append(f"| {_cell(m)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def examples(self, n: int | None = None) -> str:
        """Markdown table of the first ``n`` prompts with the first sample of every model."""
        n = self.settings.get("num_examples", 8) if n is None else n
        lines = ["| prompt | " + " | ".join(_cell(m) for m in self.models) + " |",
                 "|---" * (len(self.models) + 1) + "|"]
        for p in range(min(n, len(self.prompts))):
            row = [_cell(self.completions[m][p][0]) for m in self.models]
            lines.append(f"| {_cell(self.prompts[p])} | " + " | ".join(row) + " |")
        return "\n".join(lines)

    def to_markdown(self, path: str | None = None) -> str:
        """``report.md``: the model x metric table, what each metric is, the examples and the
        settings. Written to ``path`` when given; returns the text."""
        s = self.settings
        pct = round(100 * s.get("confidence", 0.95))
        how = ("normal approximation, mean ± z·SE with the standard error over per-prompt means"
               if s.get("ci", "normal") == "normal" else
               f"percentile bootstrap over prompts ({s.get('bootstrap_samples', 1000)} resamples)")
        out = [
            "# Evaluation", "",
            f"{len(self.prompts)} held-out prompts × {self.samples_per_prompt} samples per prompt and model. "
            f"{pct}% confidence intervals, clustered by prompt: {how}; distinct-n: normal approximation with "
            "the delete-one-prompt jackknife standard error.", "",
            self.table(), "",
        ]
        desc = s.get("metric_descriptions", {})
        if desc:
            out += ["Metrics:", ""] + [f"- **{k}**: {_cell(desc[k])}" for k in self.metrics if k in desc] + [""]
        out += ["## Examples", "", "First sample of each model on the same prompts.", "", self.examples(), "",
                "## Settings", "", "```json", json.dumps(_clean(s), indent=1, sort_keys=True), "```", ""]
        text = "\n".join(out)
        if path is not None:
            _parent(path)
            with open(path, "w") as f:
                f.write(text)
        return text

    def plot(self, path: str, *, metrics: Sequence[str] | None = None) -> str:
        """PNG: a panel per metric, a bar per model with its confidence interval as error bar."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metrics = list(self.metrics if metrics is None else metrics)
        cols = min(4, max(1, len(metrics)))
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        x = np.arange(len(self.models))
        for ax, k in zip(axes.flat, metrics):
            ivs = [self.summary[m][k] for m in self.models]
            means = np.array([iv.mean for iv in ivs])
            err = np.array([[iv.mean - iv.low for iv in ivs], [iv.high - iv.mean for iv in ivs]])
            err = np.maximum(np.nan_to_num(err), 0.0)  # a percentile interval may miss the mean
            ax.bar(x, means, yerr=err, capsize=4, color=[colors[i % len(colors)] for i in x])
            ax.set_xticks(x, self.models, rotation=30 if len(self.models) > 3 else 0)
            ax.set_title(k)
            ax.axhline(0.0, color="black", lw=0.6)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        pct = round(100 * self.settings.get("confidence", 0.95))
        fig.suptitle(f"mean and {pct}% CI ({len(self.prompts)} prompts x {self.samples_per_prompt} samples)")
        fig.tight_layout()
        _parent(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _parent(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _clean(x):
    """JSON-able copy: NaN/inf -> None, tuples -> lists, NumPy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
