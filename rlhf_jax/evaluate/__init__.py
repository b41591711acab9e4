"""Evaluation before and after alignment (the seeds' step 8): the same held-out prompts for every
model; reward, toxicity, any extra scorer, KL to the reference, length and distinct-n, with
confidence intervals clustered by prompt; JSON, Markdown and PNG reports; paired differences.

    report = evaluate([ModelSpec("sft", cfg, {"params": base}),
                       ModelSpec("ppo", cfg, {"params": base, "lora": adapter}, lora=lora_cfg)],
                      reference=ModelSpec("sft", cfg, {"params": base}), tokenizer=tok,
                      prompts=held_out, config=EvalConfig(sampling=SamplingConfig(max_new_tokens=32)),
                      reward=reward, toxicity=classifier.prob_toxic)
    report.to_markdown("report.md"); report.to_json("eval.json"); report.plot("eval.png")
    compare(report, before="sft", after="ppo")["toxicity"].ratio
"""

from rlhf_jax.evaluate.compare import Difference, compare, format_comparison
from rlhf_jax.evaluate.config import EvalConfig, ModelSpec
from rlhf_jax.evaluate.report import CORPUS_METRICS, EvaluationReport, completion_words
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
    "BUILTIN_METRICS", "CORPUS_METRICS", "Difference", "EvalConfig", "EvaluationReport", "Interval", "ModelSpec",
    "NgramCounts", "Scorer", "bootstrap_interval", "compare", "completion_words", "distinct_n", "evaluate",
    "format_comparison", "jackknife_interval", "mean_interval", "ngram_counts", "ngrams", "normal_interval", "z_value",
]
