"""PPO's configuration."""

from __future__ import annotations

import dataclasses

from rlhf_jax.config_checks import at_least, in_range, multiple_of, one_of, positive
from rlhf_jax.lora import LoraConfig
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.train.optim import OptimConfig
from rlhf_jax.train.run import RunConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig:
    """PPO-with-KL RLHF (Ziegler et al. 2019; Ouyang et al. 2022). Defaults follow common practice."""

    policy_lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The policy adapter (its ``B`` starts at 0: policy = reference at step 0). ``None``: full
    fine-tuning: the policy is a trainable copy of the whole base (``state.params["policy"]`` is a
    full parameter tree, equal to the base at step 0) and the reference stays the frozen base
    (CLI ``--policy_lora.off``, JSON ``"policy_lora": null``)."""
    critic_lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The critic adapter (with ``critic_init="reward"`` the reward adapter's config replaces it).
    ``None``: full fine-tuning whatever ``critic_init``: ``state.params["critic"]`` is
    ``{"params": full tree, "head": value head}``, the tree a copy of the base (with
    ``critic_init="reward"``: of the base with the reward adapter merged in)."""
    critic_init: str = "reward"
    """``"reward"``: the critic starts as the reward model (its adapter, or with ``critic_lora=None``
    the base with the reward adapter merged in; the score head with the normalisation folded in:
    :func:`rlhf_jax.scoring.critic_from_reward`), which needs a reward model; ``"zero"``: a fresh
    adapter (or a copy of the base) and a zero head."""
    batch_size: int = 16
    """Prompts (episodes) per PPO step."""
    mini_batch_size: int = 8
    """Episodes per gradient update; ``batch_size`` must be a multiple."""
    ppo_epochs: int = 4
    """Passes over each batch of experience."""
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=32, temperature=1.0)
    """How the policy generates (the same temperature scores the log-probs)."""
    clip_eps: float = 0.2
    """Policy ratio clip range."""
    value_clip_eps: float | None = 0.2
    """Value clip range (reward units); ``None``: unclipped."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    kl_coef: float = 0.05
    """KL penalty coefficient beta (initial value when adaptive)."""
    adaptive_kl: bool = False
    """Adapt beta towards ``kl_target`` (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL per sequence (nats) of the adaptive controller."""
    kl_horizon: float = 10000.0
    """Horizon (episodes) of the adaptive controller."""
    kl_estimator: str = "k1"
    """Per-token KL in the reward: ``"k1"``, ``"k2"``, ``"k3"`` on the sampled tokens, or
    ``"full"`` (exact over the vocabulary)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (without shifting the mean) before GAE."""
    whiten_advantages: bool = True
    """Whiten the advantages."""
    old_logprobs: str = "recompute"
    """PPO's "old" log-probs: ``"recompute"``: a no-gradient policy forward pass over the rollout;
    ``"sampler"``: the log-probs the sampler returned with the rollout (same temperature, full
    vocabulary; equal up to float rounding of the KV-cached decode). ``"sampler"`` skips the
    policy forward in the experience pass unless ``kl_estimator="full"`` needs its logits;
    without it the ``entropy`` metric is not logged."""
    reward_bound: float = 1e4
    """A score with ``|score| > reward_bound`` counts as non-finite: the step's updates are
    skipped and counted (a reward function returning 1e30 is a bug, not a signal)."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of a completion cut at ``max_new_tokens`` without EOS."""
    max_prompt_length: int | None = None
    """Prompts longer than this are cut from the left (counted); ``None``: the model's context
    minus ``max_new_tokens``."""
    reward_threshold: float | None = None
    """Stop once the mean score over the last ``threshold_window`` steps reaches this."""
    threshold_window: int = 5
    """Steps averaged for ``reward_threshold``."""
    logit_chunk: int | None = None
    """Response positions per chunk of the LM head in the experience pass and the update
    (:mod:`rlhf_jax.losses.chunked`: log-probs, entropy and the exact KL from hidden states, the
    float32 ``[B, N, V]`` logits never built); ``0``: whole logits; ``None`` (auto): chunks of 128
    once a pass's logits would exceed 1 GiB (:func:`rlhf_jax.rollout.logit_chunk_size`).
    Rematerialisation of the blocks is the model's ``ModelConfig.remat``."""
    experience_batch: int | None = None
    """Rollout rows per forward pass of the experience pass (policy, reference and critic passes
    run over groups of this many rows, one after the other, so a 64-row rollout of a 7B model does
    not need 64 rows of activations at once); ``batch_size`` must be a multiple. ``None``: the whole
    batch in one pass (fastest for small models)."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-4)
    """Optimizer of the policy and critic adapters (one optimizer, joint loss)."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    def __post_init__(self):
        one_of(self, "critic_init", ("reward", "zero"))
        at_least(self, "batch_size", 1, integer=True)
        at_least(self, "mini_batch_size", 1, integer=True)
        multiple_of(self, "batch_size", "mini_batch_size")
        at_least(self, "ppo_epochs", 1, integer=True)
        positive(self, "clip_eps")
        positive(self, "value_clip_eps", optional=True)
        in_range(self, "gamma", 0, 1)
        in_range(self, "lam", 0, 1)
        at_least(self, "vf_coef", 0)
        at_least(self, "entropy_coef", 0)
        at_least(self, "kl_coef", 0)
        positive(self, "kl_target")
        positive(self, "kl_horizon")
        one_of(self, "kl_estimator", ("k1", "k2", "k3", "full"))
        one_of(self, "old_logprobs", ("recompute", "sampler"))
        positive(self, "reward_bound")
        at_least(self, "missing_eos_penalty", 0, optional=True)
        at_least(self, "max_prompt_length", 1, integer=True, optional=True)
        at_least(self, "threshold_window", 1, integer=True)
        at_least(self, "logit_chunk", 0, integer=True, optional=True)
        at_least(self, "experience_batch", 1, integer=True, optional=True)
        if self.experience_batch is not None:
            multiple_of(self, "batch_size", "experience_batch")
