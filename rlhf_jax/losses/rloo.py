"""RLOO and REINFORCE++: critic-free advantages with the KL penalty in the reward, and RLOO's
sequence-level clipped surrogate.

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs" (RLOO); Hu 2025, "REINFORCE++: A Simple and Efficient Approach for
Aligning Large Language Models". Rows are grouped as in :mod:`rlhf_jax.losses.grpo`: ``G``
completions per prompt, contiguous.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from rlhf_jax.losses.gae import gae
from rlhf_jax.losses.grpo import _groups, _std
from rlhf_jax.losses.masked import as_float, masked_sum, masked_whiten
from rlhf_jax.losses.ppo import ppo_policy_loss
from rlhf_jax.losses.shaping import kl_shaped_rewards

__all__ = ["reinforce_pp_advantages", "rloo_advantages", "sequence_policy_loss"]


def rloo_advantages(
    rewards: Float[Array, "N"],
    *,
    group_size: int,
    normalize: bool = False,
    eps: float = 1e-4,
) -> Float[Array, "N"]:
    """REINFORCE Leave-One-Out: each completion's baseline is the mean reward of the OTHER
    ``G - 1`` completions of its prompt,

        A_i = r_i - (sum_{j in g(i)} r_j - r_i) / (G - 1)  =  G / (G - 1) * (r_i - mean_g r),

    optionally normalised over the whole batch, ``(A - mean A) / (std A + eps)`` (unbiased std;
    TRL's ``normalize_advantages``). RLOO puts the KL penalty in the reward: pass
    ``r = score - beta * sum_t KL_t`` (k1 on the sampled tokens, TRL's choice).

    Args:
      rewards: ``[N]`` rewards, ``N = prompts * group_size``, each prompt's rows contiguous.
      group_size: ``G >= 2``.
      normalize: normalise over the batch afterwards.
      eps: added to the std when normalising.

    Returns:
      ``[N]`` float32 advantages.
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages: the leave-one-out baseline needs group_size >= 2, got {group_size}")
    g = _groups(rewards, group_size)
    adv = (g - (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)).reshape(-1)
    if normalize:
        adv = (adv - jnp.mean(adv)) / (_std(adv) + eps)
    return adv


def reinforce_pp_advantages(
    scores: Float[Array, "B"],
    kl: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    beta: float,
    gamma: float = 1.0,
    group_size: int | None = None,
    eps: float = 1e-8,
) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """REINFORCE++ per-token advantages: the KL penalty on every token, the score on the last,
    the discounted return, then whitening over every real token of the batch:

        s_i  = score_i  (- mean of its group's scores when ``group_size`` is given:
                         REINFORCE++-baseline)
        r_t  = -beta KL_t + [t = last] s_i                 (:func:`kl_shaped_rewards`)
        R_t  = sum_{t' >= t} gamma^(t' - t) r_t'            (:func:`gae` with V = 0, lambda = 1)
        A_t  = (R_t - mean_m R) / sqrt(var_m R + eps)       (unbiased variance, over the batch)

    Args:
      scores: ``[B]`` sequence scores.
      kl: ``[B, T]`` per-token KL estimates (e.g. :func:`kl_penalty` of the sampling policy's and
        the reference's log-probs; k1 by default in OpenRLHF).
      mask: ``[B, T]`` completion mask.
      beta: KL coefficient.
      gamma: discount.
      group_size: subtract each group's mean score first (``G`` contiguous rows per prompt).
      eps: added to the variance when whitening.

    Returns:
      ``(advantages, returns)``, both ``[B, T]`` float32 and 0 outside the mask.
    """
    chex.assert_rank([scores, kl, mask], [1, 2, 2])
    chex.assert_equal_shape([kl, mask])
    scores = as_float(scores)
    if group_size is not None:
        g = _groups(scores, group_size)
        scores = (g - jnp.mean(g, axis=1, keepdims=True)).reshape(-1)
    rewards = kl_shaped_rewards(kl, scores, mask, beta=beta)
    returns, _ = gae(rewards, jnp.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return masked_whiten(returns, mask, eps=eps), returns


def sequence_policy_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B"],
    mask: Shaped[Array, "B T"],
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    num_sequences: float | Array | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The clipped surrogate with ONE importance ratio per completion (TRL 1.12's RLOO loss):

        rho_i = exp(sum_t m_it logp_it - sum_t m_it old_logp_it)
        L     = (1 / S) sum_i -min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps_high) A_i)

    ``S = num_sequences`` (default: the rows here; pass the whole batch's count, divided by the
    number of updates per pass, to make the loss independent of the minibatch split). This is
    :func:`rlhf_jax.losses.ppo_policy_loss` on ``[B, 1]`` sequence log-probs.

    Returns:
      ``(loss, metrics)``: ``loss``, ``policy_loss`` and the surrogate's metrics (per sequence).
    """
    chex.assert_rank([logp, old_logp, mask, advantages], [2, 2, 2, 1])
    chex.assert_equal_shape([logp, old_logp, mask])
    chex.assert_equal_shape_prefix([logp, advantages], 1)
    seq = masked_sum(logp, mask, axis=-1)[:, None]
    old = masked_sum(old_logp, mask, axis=-1)[:, None]
    ones = jnp.ones_like(seq)
    loss, metrics = ppo_policy_loss(seq, old, as_float(advantages)[:, None], ones, clip_eps=clip_eps,
                                    clip_eps_high=clip_eps_high)
    if num_sequences is not None:
        s = jnp.asarray(num_sequences, jnp.float32)
        loss = loss * jnp.where(s > 0, logp.shape[0] / jnp.where(s > 0, s, 1.0), 0.0)
    metrics = dict(metrics, policy_loss=loss, loss=loss)
    return loss, jax.lax.stop_gradient(metrics)
