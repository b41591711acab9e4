"""Normalising a reward model on the policy's own samples, from token ids: the prompts exactly as
the RL run will feed them (a chat template's rendering and special tokens included), the
completions generated with the run's stop tokens, and the scores read on those very tokens (what
:class:`rlhf_jax.scoring.ModelScorer` scores in PPO). No text goes back through the tokenizer."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jaxtyping import Int

from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout import SamplingConfig, cached_sampler
from rlhf_jax.scoring.reward_model import RewardModel, normalize_reward_model, raw_scores


def normalize_on_policy_samples(model_config: ModelConfig, rm: RewardModel, base: Any,
                                prompt_tokens: Int[np.ndarray, "N P"], prompt_mask: Int[np.ndarray, "N P"], *,
                                sampling: SamplingConfig, seed: int = 0, batch_size: int = 32
                                ) -> tuple[RewardModel, np.ndarray]:
    """Sample one completion per prompt from ``base`` (no adapter: the SFT model) and return
    ``rm`` normalised to mean 0 / std 1 on the raw scores of ``prompt + completion``, and those raw
    scores ``[N]``.

    Args:
      prompt_tokens, prompt_mask: left-padded prompts (e.g. ``RLPrompts.encoded.batch``).
      sampling: with its ``pad_id`` and stop tokens set (as :func:`rlhf_jax.train.prepare_prompts`
        resolves them).
      batch_size: rows per generation call; every call has this many rows (the last padded with
        repeats whose results are dropped), so the sampler and the scorer compile once.
    """
    n = int(np.shape(prompt_tokens)[0])
    if n < 2:
        raise ValueError(f"normalising a reward model needs >= 2 prompts, got {n}")
    sampler = cached_sampler(model_config, None, sampling)
    score = jax.jit(lambda r, b, ids, m: raw_scores(model_config, r, b, ids, m))
    key = jax.random.PRNGKey(seed)
    raw = []
    for i, start in enumerate(range(0, n, batch_size)):
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        ro = sampler({"params": base}, np.asarray(prompt_tokens)[idx], np.asarray(prompt_mask)[idx],
                     jax.random.fold_in(key, i))
        raw.append(np.asarray(score(rm, base, ro.tokens, ro.attention_mask))[:min(batch_size, n - start)])
    raw = np.concatenate(raw)
    return normalize_reward_model(rm, raw), raw
