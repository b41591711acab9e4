"""Evaluation before and after alignment (the seeds' step 8): the same held-out prompts for every
model; reward, toxicity, any extra scorer, on-topic rate, KL to the reference, length, distinct-n
and collapse diagnostics (unique completions, completions shared across prompts, entropy of the
completions), with confidence intervals clustered by prompt, overall and per prompt group; JSON,
Markdown and PNG reports; paired differences.

    report = evaluate([ModelSpec("sft", cfg, {"params": base}),
                       ModelSpec("ppo", cfg, {"params": base, "lora": adapter}, lora=lora_cfg)],
                      reference=ModelSpec("sft", cfg, {"params": base}), tokenizer=tok,
                      prompts=held_out, config=EvalConfig(sampling=SamplingConfig(max_new_tokens=32)),
                      reward=reward, toxicity=classifier.prob_toxic,
                      on_topic=toyworld.on_topic_scores, groups=toyworld.prompt_family)
    report.to_markdown("report.md"); report.to_json("eval.json"); report.plot("eval.png")
    compare(report, before="sft", after="ppo")["toxicity"].ratio
    compare(report, before="sft", after="ppo", group="animals")["unique_ratio"].diff
"""

from rlhf_jax.evaluate.compare import Difference, compare, format_comparison
from rlhf_jax.evaluate.config import EvalConfig, ModelSpec
from rlhf_jax.evaluate.diversity import (
    COLLAPSE_DESCRIPTIONS,
    COLLAPSE_METRICS,
    CompletionCounts,
    collapse_metrics,
    completion_ids,
    resolve_groups,
)
from rlhf_jax.evaluate.report import (
    CORPUS_METRICS,
    SIGNED_METRICS,
    EvaluationReport,
    completion_words,
    is_corpus_metric,
)
from rlhf_jax.evaluate.run import BUILTIN_METRICS, Scorer, evaluate
from rlhf_jax.evaluate.stats import (
    Interval,
    NgramCounts,
    bootstrap_interval,
    distinct_n,
    jackknife_interval,
    mean_interval,
    ngram_counts,
    ngrams,
    normal_interval,
    z_value,
)

__all__ = [
    "BUILTIN_METRICS", "COLLAPSE_DESCRIPTIONS", "COLLAPSE_METRICS", "CORPUS_METRICS", "CompletionCounts", "Difference",
    "EvalConfig", "EvaluationReport", "Interval", "ModelSpec", "NgramCounts", "SIGNED_METRICS", "Scorer",
    "bootstrap_interval", "collapse_metrics", "compare", "completion_ids", "completion_words", "distinct_n",
    "evaluate", "format_comparison", "is_corpus_metric", "jackknife_interval", "mean_interval", "ngram_counts",
    "ngrams", "normal_interval", "resolve_groups", "z_value",
]
