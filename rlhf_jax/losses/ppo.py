"""PPO losses on per-token arrays: clipped policy surrogate, clipped value loss, entropy bonus.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; applied to language models per
token as in Ziegler et al. 2019 and Ouyang et al. 2022 (InstructGPT). Every function takes arrays
and a mask and returns ``(loss, metrics)``; metrics carry no gradient.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from rlhf_jax.losses.masked import (
    Aggregation,
    as_float,
    masked_aggregate,
    masked_max,
    masked_mean,
    masked_min,
)

__all__ = ["ppo_policy_loss", "ppo_value_loss", "entropy_loss", "ppo_loss"]


def ppo_policy_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: Aggregation = "token",
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """PPO clipped surrogate policy loss, per token.

    With ``r_t = exp(logp_t - old_logp_t)``:

        L_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps, 1 + eps_high))
            = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t)

    and, with ``dual_clip = c > 1`` (Ye et al. 2020, "Mastering Complex Control in MOBA Games with
    Deep Reinforcement Learning"), ``L_t = min(L_t, -c A_t)`` where ``A_t < 0``, which bounds the
    loss when a very unlikely-under-old token got a large ratio. ``eps_high`` defaults to ``eps``
    (set it larger for DAPO's "clip-higher"). Ratios are computed in float32.

    Args:
      logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (the gradient
        flows through this).
      old_logp: ``[B, T]`` log-probs under the policy that sampled them (constant).
      advantages: ``[B, T]`` advantages (constant, usually whitened).
      mask: ``[B, T]`` action mask, bool or 0/1 float.
      clip_eps: lower clip range ``eps``.
      clip_eps_high: upper clip range; ``None`` means ``clip_eps``.
      dual_clip: the dual-clip constant ``c > 1``, or ``None`` for plain PPO.
      aggregation: ``"token"`` (default: mean over every real token of the batch) or
        ``"sequence"`` (mean over sequences of each sequence's token mean).

    Returns:
      ``(loss, metrics)`` with metrics ``policy_loss``; ``clip_frac`` (fraction of tokens where the
      clipped term is active); ``dual_clip_frac``; ``approx_kl`` (k3 estimate of KL(old || new),
      ``mean(r - 1 - log r)``); ``ratio_mean``, ``ratio_min``, ``ratio_max``; ``advantage_mean``.
      All metrics are token means over the mask.
    """
    chex.assert_rank([logp, old_logp, advantages, mask], 2)
    chex.assert_equal_shape([logp, old_logp, advantages, mask])
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    logp, old_logp, adv = as_float(logp), as_float(old_logp), as_float(advantages)
    keep = jnp.broadcast_to(jnp.asarray(mask) != 0, logp.shape)
    # Padding may hold garbage log-probs (TRL writes 1.0, others -inf); keep exp() finite there.
    log_ratio = jnp.where(keep, logp - old_logp, 0.0)
    adv = jnp.where(keep, adv, 0.0)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    per_token = jnp.maximum(unclipped, clipped)
    dual_clipped = jnp.zeros_like(keep)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_clipped = (adv < 0) & (per_token > bound)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, bound), per_token)
    loss = masked_aggregate(per_token, mask, aggregation=aggregation)
    # The clipped term is the larger one exactly when the ratio left the trust region in the
    # direction the advantage pushes it. (Comparing ``clipped > unclipped`` instead flips on
    # round-off inside the region, where the two are mathematically equal.)
    clip_active = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
    metrics = {
        "policy_loss": loss,
        "clip_frac": masked_mean(clip_active, mask),
        "dual_clip_frac": masked_mean(dual_clipped, mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_min": masked_min(ratio, mask),
        "ratio_max": masked_max(ratio, mask),
        "advantage_mean": masked_mean(adv, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


def ppo_value_loss(
    values: Float[Array, "B T"],
    old_values: Float[Array, "B T"],
    returns: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    clip_eps: float | None = 0.2,
    aggregation: Aggregation = "token",
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """PPO clipped value loss, per token.

        V_clip_t = clip(V_t, old_V_t - eps, old_V_t + eps)
        L_t      = 0.5 * max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    (the OpenAI baselines / TRL form; ``clip_eps=None`` gives the plain ``0.5 (V - R)^2``).

    Args:
      values: ``[B, T]`` current critic values (the gradient flows through this).
      old_values: ``[B, T]`` critic values at rollout time (constant).
      returns: ``[B, T]`` GAE returns ``R_t`` (constant).
      mask: ``[B, T]`` mask, bool or 0/1 float.
      clip_eps: value clip range, absolute (in reward units); ``None`` disables clipping.
      aggregation: ``"token"`` (default: mean over every real token of the batch) or
        ``"sequence"`` (mean over sequences of each sequence's token mean).

    Returns:
      ``(loss, metrics)`` with metrics ``value_loss``; ``value_clip_frac`` (fraction of tokens
      where the clipped term is larger); ``value_error`` (token mean of ``(V - R)^2``);
      ``value_mean`` and ``return_mean``.
    """
    chex.assert_rank([values, old_values, returns, mask], 2)
    chex.assert_equal_shape([values, old_values, returns, mask])
    v, old_v, ret = as_float(values), as_float(old_values), as_float(returns)
    keep = jnp.broadcast_to(jnp.asarray(mask) != 0, v.shape)
    v, old_v, ret = (jnp.where(keep, a, 0.0) for a in (v, old_v, ret))
    err = jnp.square(v - ret)
    if clip_eps is None:
        err_clipped = err
    else:
        # clip(V, old - eps, old + eps) is V itself, bit for bit, inside the range
        v_clipped = jnp.clip(v, old_v - clip_eps, old_v + clip_eps)
        err_clipped = jnp.where(v_clipped == v, err, jnp.square(v_clipped - ret))
    per_token = 0.5 * jnp.maximum(err, err_clipped)
    loss = masked_aggregate(per_token, mask, aggregation=aggregation)
    metrics = {
        "value_loss": loss,
        "value_clip_frac": masked_mean(err_clipped > err, mask),
        "value_error": masked_mean(err, mask),
        "value_mean": masked_mean(v, mask),
        "return_mean": masked_mean(ret, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


def entropy_loss(
    entropy: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    aggregation: Aggregation = "token",
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Entropy bonus as a loss to minimise, ``L = -mean_m H_t``.

    Add ``coef * L`` to the PPO loss to keep the policy from collapsing (Mnih et al. 2016;
    Schulman et al. 2017). Get ``H_t`` from :func:`rlhf_jax.losses.entropy_from_logits`.

    Args:
      entropy: ``[B, T]`` per-token entropies (nats).
      mask: ``[B, T]`` mask, bool or 0/1 float.
      aggregation: ``"token"`` (default: mean over every real token of the batch) or
        ``"sequence"`` (mean over sequences of each sequence's token mean).

    Returns:
      ``(loss, metrics)`` with ``loss = -mean entropy`` and metrics ``entropy`` (the mean entropy).
    """
    chex.assert_equal_shape([entropy, mask])
    mean_entropy = masked_aggregate(as_float(entropy), mask, aggregation=aggregation)
    return -mean_entropy, jax.lax.stop_gradient({"entropy": mean_entropy})


def ppo_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B T"],
    values: Float[Array, "B T"],
    old_values: Float[Array, "B T"],
    returns: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    entropy: Float[Array, "B T"] | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    value_clip_eps: float | None = 0.2,
    vf_coef: float = 0.1,
    entropy_coef: float = 0.0,
    aggregation: Aggregation = "token",
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The whole PPO objective of one minibatch, policy and critic trained jointly:

        L = L_clip(pi) + vf_coef * L_value(V) - entropy_coef * mean H

    with :func:`ppo_policy_loss`, :func:`ppo_value_loss` and :func:`entropy_loss` (each a token
    mean over ``mask`` by default, ``aggregation="sequence"`` for the mean of per-sequence means).

    Args:
      logp, old_logp, advantages: see :func:`ppo_policy_loss`.
      values, old_values, returns: see :func:`ppo_value_loss`.
      mask: ``[B, T]`` response mask.
      entropy: ``[B, T]`` per-token entropies of the current policy; needed when
        ``entropy_coef != 0``, and logged as ``entropy`` when given.
      clip_eps, clip_eps_high: policy ratio clip range.
      value_clip_eps: value clip range (``None``: unclipped).
      vf_coef: weight of the value loss.
      entropy_coef: weight of the entropy bonus.
      aggregation: ``"token"`` or ``"sequence"``.

    Returns:
      ``(loss, metrics)``: ``loss`` and every metric of the three parts.
    """
    if entropy_coef and entropy is None:
        raise ValueError("ppo_loss: entropy_coef is set but no per-token entropy was given")
    pg, pg_m = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
                               aggregation=aggregation)
    vf, vf_m = ppo_value_loss(values, old_values, returns, mask, clip_eps=value_clip_eps, aggregation=aggregation)
    loss = pg + vf_coef * vf
    metrics = {**pg_m, **vf_m}
    if entropy is not None:
        ent_loss, ent_m = entropy_loss(entropy, mask, aggregation=aggregation)
        loss = loss + entropy_coef * ent_loss
        metrics.update(ent_m)
    metrics["loss"] = jax.lax.stop_gradient(loss)
    return loss, metrics
