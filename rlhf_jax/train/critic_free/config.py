"""The configs of the critic-free algorithms: the fields they share (:class:`CriticFreeConfig`) and
one subclass each, :class:`GRPOConfig`, :class:`RLOOConfig`, :class:`ReinforcePPConfig`."""

from __future__ import annotations

import dataclasses

from rlhf_jax.config_checks import at_least, check, in_range, one_of, positive
from rlhf_jax.lora import LoraConfig
from rlhf_jax.losses.grpo import LOSS_TYPES
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.train.optim import OptimConfig
from rlhf_jax.train.run import RunConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class CriticFreeConfig:
    """What GRPO, RLOO and REINFORCE++ share: a policy over the frozen base (the reference), ``G``
    samples per prompt, several clipped updates per batch, no critic."""

    policy_lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The policy adapter (``B = 0`` at init: policy = reference at step 0). ``None``: full
    fine-tuning, the policy a trainable copy of the base (CLI ``--policy_lora.off``)."""
    batch_size: int = 8
    """Prompts per step."""
    group_size: int = 8
    """G: completions sampled per prompt (a step trains on ``batch_size * group_size`` rows, the
    rows of a prompt contiguous)."""
    mini_batch_size: int | None = None
    """Completions per gradient update; ``batch_size * group_size`` must be a multiple.
    ``None``: all of them (one update per iteration)."""
    shared_prompt: bool = True
    """Compute each group's prompt ONCE in the reference, old-policy and training passes (its keys
    and values, with gradient, shared by the group's ``G`` completions:
    :mod:`rlhf_jax.rollout.shared_prefix`; equal to row-wise passes within float rounding). Needs
    ``group_size >= 2`` and minibatches of whole groups (``mini_batch_size`` a multiple of
    ``group_size``; minibatches then shuffle groups, not rows); otherwise the passes run row by
    row. The rows of a group must carry the same prompt (the drivers' batches do): a batch whose
    group rows differ is skipped, counted in ``prompt_mismatch``."""
    logit_chunk: int | None = None
    """Completion positions per chunk of the LM head in every pass (:mod:`rlhf_jax.losses.chunked`:
    log-probs and entropy from hidden states, the float32 ``[rows, N, V]`` logits never built);
    ``0``: whole logits; ``None`` (auto): chunks of 128 once a pass's logits would exceed 1 GiB
    (:func:`rlhf_jax.rollout.logit_chunk_size`)."""
    num_iterations: int = 1
    """mu: passes over each batch (each pass reshuffles the minibatches); the importance ratio
    against the sampling policy corrects the later updates."""
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=64, temperature=1.0)
    """How the policy generates (the same temperature scores the log-probs)."""
    clip_eps: float = 0.2
    """Lower clip range of the importance ratio."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO's clip-higher: 0.28); ``None``: ``clip_eps``."""
    loss_type: str = "dapo"
    """How per-token losses become the loss (:func:`rlhf_jax.losses.grpo_loss`): ``"dapo"``: sum
    over the batch's token count (token level); ``"grpo"``: mean over completions of their token
    means (sequence level); ``"dr_grpo"``: sum over completions x ``max_new_tokens``; ``"bnpo"``:
    mean over the minibatch's tokens. All but ``bnpo`` are independent of ``mini_batch_size``."""
    kl_coef: float = 0.04
    """KL coefficient beta (0: no reference pass at all)."""
    old_logprobs: str = "auto"
    """The importance ratio's "old" log-probs: ``"auto"``: with one update per step and no KL
    in the reward, the update's own log-probs (detached: ratio 1, no extra pass, as TRL), else
    a no-gradient policy pass (``"recompute"``); ``"sampler"``: the log-probs the sampler
    returned (no extra pass; equal to a recomputation up to float rounding)."""
    filter_zero_std: bool = False
    """Drop from the loss the rows of groups whose scores are all equal (their advantage is 0 in
    GRPO and RLOO: they only add KL and dilute the normaliser). Always counted as
    ``zero_std_frac``."""
    log_entropy: bool = True
    """Log the policy's mean token entropy (one more pass over the logits of each update)."""
    reward_bound: float = 1e4
    """A score with ``|score| > reward_bound`` or non-finite skips the step's updates (counted
    as ``bad_scores``; a reward of 1e30 is a bug, not a signal)."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of a completion cut at ``max_new_tokens`` without EOS."""
    max_prompt_length: int | None = None
    """Prompts longer than this keep their last tokens (counted); ``None``: the model's context
    minus ``max_new_tokens``."""
    reward_threshold: float | None = None
    """Stop once the mean score over the last ``threshold_window`` steps reaches this."""
    threshold_window: int = 5
    """Steps averaged for ``reward_threshold``."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-4)
    """Optimizer of the policy."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    loss_types = LOSS_TYPES  # the loss_type values this algorithm takes (a class attribute, not a field)

    def __post_init__(self):
        at_least(self, "batch_size", 1, integer=True)
        at_least(self, "group_size", 1, integer=True)
        at_least(self, "mini_batch_size", 1, integer=True, optional=True)
        if self.mini_batch_size is not None:
            check(self, "mini_batch_size", (self.batch_size * self.group_size) % self.mini_batch_size == 0,
                  f"a divisor of batch_size * group_size = {self.batch_size * self.group_size}")
        at_least(self, "num_iterations", 1, integer=True)
        positive(self, "clip_eps")
        positive(self, "clip_eps_high", optional=True)
        one_of(self, "loss_type", self.loss_types)
        at_least(self, "kl_coef", 0)
        one_of(self, "old_logprobs", ("auto", "recompute", "sampler"))
        check(self, "filter_zero_std", not (self.filter_zero_std and self.group_size < 2),
              "False when group_size is 1 (every group of one has zero variance)")
        positive(self, "reward_bound")
        at_least(self, "missing_eos_penalty", 0, optional=True)
        at_least(self, "max_prompt_length", 1, integer=True, optional=True)
        at_least(self, "threshold_window", 1, integer=True)
        at_least(self, "logit_chunk", 0, integer=True, optional=True)

    @property
    def grouped_passes(self) -> bool:
        """Whether the passes compute each group's prompt once (see ``shared_prompt``)."""
        return self.shared_prompt and self.group_size > 1 and (self.mini_batch_size or self.rows) % self.group_size == 0

    @property
    def rows(self) -> int:
        """Completions per step, ``batch_size * group_size``."""
        return self.batch_size * self.group_size

    @property
    def updates_per_step(self) -> int:
        return self.num_iterations * (self.rows // (self.mini_batch_size or self.rows))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig(CriticFreeConfig):
    """GRPO (Shao et al. 2024): advantages normalised within each prompt's group, the KL to the
    reference as a loss term. Dr. GRPO: ``scale_rewards="none", loss_type="dr_grpo"``; DAPO:
    ``clip_eps_high=0.28, loss_type="dapo", kl_coef=0, filter_zero_std=True``."""

    scale_rewards: str = "group"
    """Divide the centred scores by the std of the group (``"group"``), of the whole batch
    (``"batch"``), or not at all (``"none"``, Dr. GRPO)."""
    advantage_eps: float = 1e-4
    """Added to the std before dividing."""
    kl_estimator: str = "k3"
    """Per-token KL estimator of the loss term: ``"k3"`` (non-negative, unbiased), ``"k1"`` or
    ``"k2"``."""

    def __post_init__(self):
        super().__post_init__()
        check(self, "group_size", self.group_size >= 2, "at least 2 (advantages are relative to the group)")
        one_of(self, "scale_rewards", ("group", "batch", "none"))
        positive(self, "advantage_eps")
        one_of(self, "kl_estimator", ("k1", "k2", "k3"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLOOConfig(CriticFreeConfig):
    """RLOO (Ahmadian et al. 2024): each completion's baseline is the mean score of the other
    ``G - 1`` of its prompt; the KL penalty (k1, summed over the completion) is in the reward;
    by default one importance ratio per completion (TRL's RLOO loss)."""

    loss_type: str = "sequence"
    """``"sequence"``: one ratio per completion from its summed log-probs, clipped, mean over
    completions (TRL's RLOO); or a per-token aggregation of :class:`GRPOConfig`'s (``"dapo"``,
    ``"grpo"``, ``"dr_grpo"``, ``"bnpo"``)."""
    kl_coef: float = 0.05
    """KL coefficient beta: ``reward = score - beta * sum_t (log pi_old - log pi_ref)``."""
    normalize_advantages: bool = False
    """Normalise the advantages over the batch (mean 0, std 1)."""
    advantage_eps: float = 1e-4
    """Added to the std when normalising."""

    loss_types = ("sequence",) + LOSS_TYPES

    def __post_init__(self):
        super().__post_init__()
        check(self, "group_size", self.group_size >= 2, "at least 2 (the leave-one-out baseline needs siblings)")
        positive(self, "advantage_eps")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReinforcePPConfig(CriticFreeConfig):
    """REINFORCE++ (Hu 2025): the KL penalty per token in the reward, discounted returns,
    advantages whitened over the whole batch; ``group_baseline=True`` with ``group_size > 1`` is
    REINFORCE++-baseline (each prompt's mean score subtracted first)."""

    group_size: int = 1
    """G: completions sampled per prompt (1 in the original REINFORCE++)."""
    batch_size: int = 32
    """Prompts per step."""
    kl_coef: float = 0.01
    """KL coefficient beta of the per-token reward ``-beta * KL_t``."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: ``"k1"``, ``"k2"`` or ``"k3"``."""
    gamma: float = 1.0
    """Discount of the returns."""
    group_baseline: bool = False
    """Subtract each prompt's mean score before the returns (needs ``group_size >= 2``)."""

    def __post_init__(self):
        super().__post_init__()
        one_of(self, "kl_estimator", ("k1", "k2", "k3"))
        in_range(self, "gamma", 0, 1)
        check(self, "group_baseline", not (self.group_baseline and self.group_size < 2),
              "False when group_size is 1 (a group of one has no baseline)")

