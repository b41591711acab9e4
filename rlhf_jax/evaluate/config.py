"""What to evaluate (:class:`ModelSpec`) and how (:class:`EvalConfig`)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from rlhf_jax.evaluate.stats import CI_METHODS, z_value
from rlhf_jax.lora import outer_params
from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout import SamplingConfig


class ModelSpec(NamedTuple):
    """One model to evaluate: a name, its config, the base, and what sits on it.

    ``ModelSpec("sft", config, base)`` is the base model; ``ModelSpec("ppo", config, base,
    adapter)`` the base with an :class:`rlhf_jax.lora.Adapter` on (``state.params["policy"]`` of a
    PPO run); ``ModelSpec("full", config, None, params)`` a fully fine-tuned model.
    """

    name: str
    """Row label in the report (unique among the evaluated models)."""
    config: ModelConfig
    """The model's config; its ``vocab_size`` must cover the tokenizer."""
    base: Any
    """The base parameter tree (``None`` when ``trainable`` is a full tree of its own)."""
    trainable: Any = None
    """An :class:`rlhf_jax.lora.Adapter` over ``base``, a full parameter tree, or ``None`` (the
    base alone); see :func:`rlhf_jax.lora.model_variables`."""

    @property
    def params(self):
        """The parameter tree that holds the embedding and the LM head."""
        return outer_params(self.base, self.trainable)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How :func:`rlhf_jax.evaluate.evaluate` samples, scores and summarises."""

    sampling: SamplingConfig
    """How completions are sampled (``max_new_tokens``, temperature, top-k/p, EOS, pad). Its
    ``temperature`` is also the one of the log-probs behind the KL column, as in PPO. A missing
    ``pad_id`` / ``eos_ids`` falls back to the model config, then to the tokenizer."""
    samples_per_prompt: int = 4
    """S, completions sampled per prompt and model."""
    seed: int = 0
    """Batch ``i`` of every model samples with ``fold_in(PRNGKey(seed), i)``: the models share
    their random numbers (two identical models give identical completions). Also seeds the
    bootstrap."""
    batch_size: int = 64
    """Rows (prompt x sample) per generation batch; every batch has this size (the last one is
    padded with repeats whose results are dropped), so the sampler compiles once per model
    structure. Lower it if the ``[B, T, V]`` logits of the KL pass do not fit in memory."""
    prompt_bucket: int | str = 16
    """All prompts are left padded to one length: the longest prompt rounded up to a multiple of
    this (or ``"pow2"``); see :func:`rlhf_jax.rollout.bucket_length`."""
    max_prompt_length: int | None = None
    """Longer prompts keep their last tokens (as in PPO). ``None``: the smallest
    ``max_position_embeddings`` of the models minus ``max_new_tokens``."""
    keep_special_tokens: bool = True
    """Decode the completions given to the toxicity classifier, to the extra scorers and shown in
    the report with special tokens kept, so a finished completion ends with the EOS token's text
    (rubrics that penalise unfinished answers need it). A text reward always gets completions
    decoded without special tokens, as in PPO training."""
    ci: str = "normal"
    """Interval of per-sample metrics, clustered by prompt: ``"normal"`` (mean +/- z * SE over
    the per-prompt means) or ``"bootstrap"`` (percentile bootstrap over prompts). distinct-n,
    not a mean, always uses the normal approximation with a delete-one-prompt jackknife SE."""
    confidence: float = 0.95
    """Coverage of the intervals."""
    bootstrap_samples: int = 1000
    """Resamples for bootstrap intervals."""
    num_examples: int = 8
    """Prompts in the report's side-by-side examples (the first ones, first sample of each model)."""
    progress: bool = True
    """Show a progress bar per model (tqdm, on stderr)."""

    def __post_init__(self):
        if not isinstance(self.samples_per_prompt, int) or self.samples_per_prompt < 1:
            raise ValueError(f"EvalConfig.samples_per_prompt must be an int >= 1, got {self.samples_per_prompt!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.ci not in CI_METHODS:
            raise ValueError(f"EvalConfig.ci must be one of {CI_METHODS}, got {self.ci!r}")
        z_value(self.confidence)
        if self.bootstrap_samples < 2:
            raise ValueError(f"EvalConfig.bootstrap_samples must be >= 2, got {self.bootstrap_samples}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"EvalConfig.max_prompt_length must be >= 1, got {self.max_prompt_length}")
