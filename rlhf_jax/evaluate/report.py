"""The result of an evaluation: per-sample values, intervals (overall and per prompt group), and
JSON / Markdown / PNG output."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import numpy as np

from rlhf_jax.evaluate.diversity import COLLAPSE_DESCRIPTIONS, COLLAPSE_METRICS, CompletionCounts, completion_ids
from rlhf_jax.evaluate.output import cell, clean, parent
from rlhf_jax.evaluate.stats import Interval, NgramCounts, jackknife_interval, mean_interval, ngram_counts

CORPUS_METRICS = {"distinct_1": 1, "distinct_2": 2}
"""Metrics of the whole set of completions (not means of per-sample values), with their n."""

SIGNED_METRICS = ("reward", "kl")
"""Built-in per-sample metrics that can be negative (a normalised reward; the k1 KL estimate of
one completion): :func:`~rlhf_jax.evaluate.compare` gives them no ratio."""


def completion_words(text: str, special_tokens: Sequence[str] = ()) -> list[str]:
    """Whitespace-separated words of ``text`` once every special token's text is removed (the
    units of distinct-n)."""
    for tok in special_tokens:
        if tok:
            text = text.replace(tok, " ")
    return text.split()


def is_corpus_metric(metric: str) -> bool:
    """Whether ``metric`` is a statistic of the whole set of completions (distinct-n, the
    collapse diagnostics) rather than a mean of per-sample values."""
    return metric in CORPUS_METRICS or metric in COLLAPSE_METRICS


@dataclasses.dataclass
class EvaluationReport:
    """Models x metrics on the same prompts; build it with :func:`rlhf_jax.evaluate.evaluate`.

    ``values[model][metric]`` is ``[P, S]`` (prompt x sample) for the per-sample metrics;
    distinct-n (:data:`CORPUS_METRICS`) and the collapse diagnostics
    (:data:`~rlhf_jax.evaluate.diversity.COLLAPSE_METRICS`) are computed here from the
    completions. ``summary[model][metric]`` is an :class:`~rlhf_jax.evaluate.stats.Interval`;
    with ``groups``, ``by_group[group][model][metric]`` is the same over the group's prompts.
    """

    models: list[str]
    """Model names, in evaluation order."""
    metrics: list[str]
    """Metric names, in column order (per-sample metrics, then distinct-n, then collapse)."""
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
    groups: list[str] | None = None
    """The group label of each prompt (e.g. the toy world's topic family), or ``None``."""

    def __post_init__(self):
        self.values = {m: {k: np.asarray(v, np.float64) for k, v in d.items()} for m, d in self.values.items()}
        self._ngrams: dict[tuple[str, int], NgramCounts] = {}
        self._strings: dict[str, CompletionCounts] = {}
        if self.groups is not None:
            self.groups = list(self.groups)
            if len(self.groups) != len(self.prompts):
                raise ValueError(f"EvaluationReport: {len(self.groups)} group labels for {len(self.prompts)} prompts "
                                 "(one label per prompt)")
        if not self.summary:
            self.summary = {m: {k: self.interval(m, k) for k in self.metrics} for m in self.models}
        self.by_group: dict[str, dict[str, dict[str, Interval]]] = {
            g: {m: {k: self.interval(m, k, group=g) for k in self.metrics} for m in self.models}
            for g in self.group_names}

    # ------------------------------------------------------------------------------ statistics

    @property
    def samples_per_prompt(self) -> int:
        return len(self.completions[self.models[0]][0])

    @property
    def group_names(self) -> list[str]:
        """The distinct group labels, sorted (empty without groups)."""
        return sorted(set(self.groups)) if self.groups is not None else []

    def group_indices(self, group: str | None) -> np.ndarray:
        """Indices of the prompts of ``group`` (every prompt for ``None``)."""
        if group is None:
            return np.arange(len(self.prompts))
        if group not in self.group_names:
            raise KeyError(f"no group {group!r} in the report (groups: {self.group_names or 'none'})")
        return np.asarray([i for i, g in enumerate(self.groups) if g == group], np.int64)

    @property
    def sample_metrics(self) -> list[str]:
        """The metrics that are means of per-sample values, in column order."""
        return [k for k in self.metrics if not is_corpus_metric(k)]

    @property
    def corpus_metrics(self) -> list[str]:
        """distinct-n and the collapse diagnostics present, in column order."""
        return [k for k in self.metrics if is_corpus_metric(k)]

    def ngram_counts(self, model: str, n: int) -> NgramCounts:
        """Per-prompt word ``n``-gram sets of ``model``'s completions (cached)."""
        if (model, n) not in self._ngrams:
            special = self.settings.get("special_tokens", ())
            words = [[completion_words(t, special) for t in row] for row in self.completions[model]]
            self._ngrams[model, n] = ngram_counts(words, n)
        return self._ngrams[model, n]

    def completion_counts(self, model: str) -> CompletionCounts:
        """Which prompt wrote which distinct completion string how often (cached)."""
        if model not in self._strings:
            self._strings[model] = CompletionCounts.from_ids(completion_ids(self.completions[model]))
        return self._strings[model]

    def corpus_statistic(self, model: str, metric: str, prompts: np.ndarray | None = None
                         ) -> tuple[float, np.ndarray]:
        """``(estimate, leave-one-prompt-out values)`` of a corpus metric over ``prompts``
        (indices; all by default), for the jackknife."""
        if metric in CORPUS_METRICS:
            counts = self.ngram_counts(model, CORPUS_METRICS[metric])
            counts = counts if prompts is None else counts.subset(prompts)
            return counts.distinct(), counts.leave_one_out()
        counts = self.completion_counts(model)
        return (counts if prompts is None else counts.subset(prompts)).statistic(metric)

    def _stat_kwargs(self) -> dict:
        s = self.settings
        return dict(confidence=s.get("confidence", 0.95), samples=s.get("bootstrap_samples", 1000),
                    seed=s.get("seed", 0))

    def interval(self, model: str, metric: str, *, group: str | None = None) -> Interval:
        """Estimate and interval of ``metric`` for ``model`` over every prompt, or over the
        prompts of ``group`` (see :mod:`rlhf_jax.evaluate.stats` and
        :mod:`rlhf_jax.evaluate.diversity`)."""
        self._check(model, metric)
        idx = None if group is None else self.group_indices(group)
        if is_corpus_metric(metric):
            estimate, loo = self.corpus_statistic(model, metric, idx)
            return jackknife_interval(estimate, loo, confidence=self.settings.get("confidence", 0.95))
        x = self.values[model][metric]
        return mean_interval(x if idx is None else x[idx], method=self.settings.get("ci", "normal"),
                             **self._stat_kwargs())

    def nonnegative(self, metric: str) -> bool:
        """Whether ``metric`` cannot be negative, so that ``after / before`` means something: the
        corpus metrics; not :data:`SIGNED_METRICS`; any other per-sample metric when every value
        of every model is >= 0."""
        if is_corpus_metric(metric):
            return True
        if metric in SIGNED_METRICS:
            return False
        return all(float(np.min(self.values[m][metric])) >= 0.0 for m in self.models)

    def _check(self, model: str, metric: str | None = None) -> None:
        if model not in self.models:
            raise KeyError(f"no model {model!r} in the report (models: {self.models})")
        if metric is not None and metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} in the report (metrics: {self.metrics})")

    def means(self, group: str | None = None) -> dict[str, dict[str, float]]:
        """``{model: {metric: estimate}}`` over every prompt, or over ``group``'s."""
        if group is not None and group not in self.by_group:
            self.group_indices(group)  # raises, naming the groups
        src = self.summary if group is None else self.by_group[group]
        return {m: {k: iv.mean for k, iv in d.items()} for m, d in src.items()}

    # ------------------------------------------------------------------------------ output

    def to_dict(self) -> dict:
        """Everything as JSON-able Python (NaN becomes ``None``)."""
        iv = lambda d: {m: {k: v._asdict() for k, v in dm.items()} for m, dm in d.items()}  # noqa: E731
        return clean({
            "settings": self.settings, "models": self.models, "metrics": self.metrics, "prompts": self.prompts,
            "groups": self.groups, "summary": iv(self.summary),
            "by_group": {g: iv(d) for g, d in self.by_group.items()},
            "samples": {m: {"completions": self.completions[m],
                            **{k: v.tolist() for k, v in self.values[m].items()}} for m in self.models},
        })

    def to_json(self, path: str) -> str:
        """Write :meth:`to_dict` to ``path``; returns the path."""
        parent(path)
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
                   completions={m: s["completions"] for m, s in d["samples"].items()}, settings=d["settings"],
                   groups=d.get("groups"))

    def format_interval(self, iv: Interval) -> str:
        """``mean ± half-width`` for a symmetric interval, else ``mean [low, high]``."""
        if math.isnan(iv.low):
            return f"{iv.mean:.3f}"
        half = (iv.high - iv.low) / 2
        if abs((iv.mean - iv.low) - half) <= 1e-9 * max(1.0, abs(half)):
            return f"{iv.mean:.3f} ± {half:.3f}"
        return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]"

    def table(self, metrics: Sequence[str] | None = None, *, group: str | None = None) -> str:
        """Markdown table, a row per model and a column per metric (all by default), over every
        prompt or over ``group``'s."""
        metrics = list(self.metrics if metrics is None else metrics)
        src = self.summary if group is None else self.by_group[group]
        lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for m in self.models:
            lines.append(f"| {cell(m)} | " + " | ".join(self.format_interval(src[m][k]) for k in metrics) + " |")
        return "\n".join(lines)

    def group_table(self, metrics: Sequence[str] | None = None) -> str:
        """Markdown table, a row per (group, model) and a column per metric; ``""`` without groups."""
        if not self.by_group:
            return ""
        metrics = list(self.metrics if metrics is None else metrics)
        lines = ["| group | prompts | model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 3) + "|"]
        for g in self.group_names:
            n = len(self.group_indices(g))
            for m in self.models:
                cells = [self.format_interval(self.by_group[g][m][k]) for k in metrics]
                lines.append(f"| {cell(g)} | {n} | {cell(m)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def examples(self, n: int | None = None, *, group: str | None = None) -> str:
        """Markdown table of the first ``n`` prompts (of ``group``) with the first sample of every
        model."""
        n = self.settings.get("num_examples", 8) if n is None else n
        lines = ["| prompt | " + " | ".join(cell(m) for m in self.models) + " |",
                 "|---" * (len(self.models) + 1) + "|"]
        for p in self.group_indices(group)[:n]:
            row = [cell(self.completions[m][p][0]) for m in self.models]
            lines.append(f"| {cell(self.prompts[p])} | " + " | ".join(row) + " |")
        return "\n".join(lines)

    def group_examples(self, n: int | None = None, *, level: int = 3) -> str:
        """Per group, a Markdown heading of ``level`` (``### group``) and :meth:`examples` of its
        first ``n`` prompts (default: ``num_examples / groups``, at least 2); ``""`` without groups."""
        if not self.by_group:
            return ""
        if n is None:
            n = max(2, self.settings.get("num_examples", 8) // len(self.group_names))
        return "\n\n".join(f"{'#' * level} {g}\n\n{self.examples(n, group=g)}" for g in self.group_names)

    def to_markdown(self, path: str | None = None) -> str:
        """``report.md``: the model x metric tables (scores; diversity and collapse), what each
        metric is, the same per group, the examples and the settings. Written to ``path`` when
        given; returns the text."""
        s = self.settings
        pct = round(100 * s.get("confidence", 0.95))
        how = ("normal approximation, mean ± z·SE with the standard error over per-prompt means"
               if s.get("ci", "normal") == "normal" else
               f"percentile bootstrap over prompts ({s.get('bootstrap_samples', 1000)} resamples)")
        out = [
            "# Evaluation", "",
            f"{len(self.prompts)} held-out prompts × {self.samples_per_prompt} samples per prompt and model. "
            f"{pct}% confidence intervals, clustered by prompt: {how}; distinct-n and the collapse diagnostics: "
            "normal approximation with the delete-one-prompt jackknife standard error.", "",
            self.table(self.sample_metrics), "",
        ]
        if self.corpus_metrics:
            out += ["## Diversity and collapse", "",
                    "distinct-n counts word n-grams; the collapse diagnostics compare whole completions as "
                    "exact strings (entropy in bits, not normalised: log2 of the number of completions when "
                    "all differ).", "", self.table(self.corpus_metrics), ""]
        desc = {**COLLAPSE_DESCRIPTIONS, **s.get("metric_descriptions", {})}
        if any(k in desc for k in self.metrics):
            out += ["Metrics:", ""] + [f"- **{k}**: {cell(desc[k])}" for k in self.metrics if k in desc] + [""]
        if self.by_group:
            out += ["## By group", "",
                    f"The same statistics over each group's prompts alone ({len(self.group_names)} groups).", "",
                    self.group_table(self.sample_metrics), ""]
            if self.corpus_metrics:
                out += [self.group_table(self.corpus_metrics), ""]
        out += ["## Examples", "", "First sample of each model on the same prompts.", "", self.examples(), ""]
        if self.by_group:
            out += [self.group_examples(), ""]
        out += ["## Settings", "", "```json", json.dumps(clean(s), indent=1, sort_keys=True), "```", ""]
        text = "\n".join(out)
        if path is not None:
            parent(path)
            with open(path, "w") as f:
                f.write(text)
        return text

    def plot(self, path: str, *, metrics: Sequence[str] | None = None) -> str:
        """PNG: a panel per metric (all by default), a bar per model with its confidence interval
        as error bar; with groups, a cluster of bars for all prompts and one per group."""
        from rlhf_jax.evaluate.plot import plot_report

        return plot_report(self, path, metrics=metrics)
