"""RLHF losses as pure functions on arrays (never a model).

Losses return ``(loss, metrics)``; hyper-parameters are keyword-only; log-softmax, ratios and KL
are computed in float32 whatever the input dtype; nothing is jitted here (jit your step once).
:mod:`rlhf_jax.losses.chunked` computes log-probs, entropy, exact KL and the SFT loss from final
hidden states and the LM head weight (arrays too) without materialising ``[B, T, V]`` logits.
Axis letters: B batch, T time, V vocab, K completions per prompt.
"""

from rlhf_jax.losses.chunked import (
    chunked_entropy,
    chunked_exact_kl,
    chunked_logprobs_and_entropy,
    chunked_nll,
    chunked_token_logprobs,
)
from rlhf_jax.losses.dpo import dpo_loss, ipo_loss
from rlhf_jax.losses.gae import gae
from rlhf_jax.losses.grpo import LOSS_TYPES, LossType, RewardScale, group_advantages, grpo_loss, zero_variance_groups
from rlhf_jax.losses.kl import Estimator, exact_kl_from_logits, kl_loss, kl_penalty
from rlhf_jax.losses.kl_control import (
    KLController,
    KLControllerState,
    adaptive_kl_controller,
    fixed_kl_controller,
)
from rlhf_jax.losses.logprobs import entropy_from_logits, sequence_logprobs, token_logprobs
from rlhf_jax.losses.masked import (
    Aggregation,
    masked_aggregate,
    masked_max,
    masked_mean,
    masked_min,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlhf_jax.losses.ppo import entropy_loss, ppo_loss, ppo_policy_loss, ppo_value_loss
from rlhf_jax.losses.shaping import kl_shaped_rewards, last_token_onehot
from rlhf_jax.losses.reward import best_of_k_loss, bradley_terry_loss, ranking_loss
from rlhf_jax.losses.rloo import reinforce_pp_advantages, rloo_advantages, sequence_policy_loss

__all__ = [
    # masked reductions
    "Aggregation",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "masked_max",
    "masked_min",
    "masked_aggregate",
    # log-probs
    "token_logprobs",
    "entropy_from_logits",
    "sequence_logprobs",
    # the same from hidden states + LM head, over sequence chunks (no [B, T, V] logits)
    "chunked_token_logprobs",
    "chunked_entropy",
    "chunked_logprobs_and_entropy",
    "chunked_exact_kl",
    "chunked_nll",
    # KL
    "Estimator",
    "kl_penalty",
    "exact_kl_from_logits",
    "kl_loss",
    # advantages
    "gae",
    # PPO
    "ppo_policy_loss",
    "ppo_value_loss",
    "entropy_loss",
    "ppo_loss",
    # critic-free RL: GRPO, RLOO, REINFORCE++
    "LOSS_TYPES",
    "LossType",
    "RewardScale",
    "group_advantages",
    "zero_variance_groups",
    "grpo_loss",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "sequence_policy_loss",
    # per-token rewards
    "kl_shaped_rewards",
    "last_token_onehot",
    # reward model
    "bradley_terry_loss",
    "ranking_loss",
    "best_of_k_loss",
    # preference optimisation
    "dpo_loss",
    "ipo_loss",
    # KL coefficient control
    "KLControllerState",
    "KLController",
    "fixed_kl_controller",
    "adaptive_kl_controller",
]
