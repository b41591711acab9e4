"""Generalized Advantage Estimation over token sequences with padding masks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from rlhf_jax.losses.masked import as_float

__all__ = ["gae"]


def gae(
    rewards: Float[Array, "B T"],
    values: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation"), one trajectory per row.

    Over the real (``mask == 1``) positions of a row, in order ``t_1 < t_2 < ... < t_n``:

        delta_t = r_t + gamma * V(next(t)) - V(t)
        A_t     = delta_t + gamma * lam * A(next(t))
        R_t     = A_t + V(t)

    where ``next(t)`` is the next *real* position of the row; after the last real token the value
    and advantage are 0 (the episode terminates at EOS). Masked positions are skipped: their reward
    and value are ignored, they get ``A = R = 0``, and the carried ``V``/``A`` pass over them
    unchanged, so left padding, right padding and holes in the middle of a row (e.g. tool output
    that is not the policy's action) all work. Implemented with a reverse ``jax.lax.scan`` over
    time, in float32. Nothing is averaged; whiten the advantages afterwards if wanted
    (:func:`rlhf_jax.losses.masked_whiten`).

    In RLHF the per-token reward is ``-beta * KL_t`` plus the sequence score on the last real
    token, ``gamma = 1`` and ``lam = 0.95`` (InstructGPT / TRL defaults).

    Args:
      rewards: ``[B, T]`` per-token rewards.
      values: ``[B, T]`` critic values ``V(t)`` of the state before token ``t`` is emitted.
      mask: ``[B, T]`` action mask (1 where the policy emitted the token), bool or 0/1 float.
      gamma: discount.
      lam: GAE lambda (0: one-step TD, 1: Monte-Carlo return minus value).

    Returns:
      ``(advantages, returns)``, both ``[B, T]`` float32, 0 at masked positions.
    """
    chex.assert_rank([rewards, values, mask], 2)
    chex.assert_equal_shape([rewards, values, mask])
    rewards, values = as_float(rewards), as_float(values)
    dtype = jnp.result_type(rewards, values)
    rewards, values = rewards.astype(dtype), values.astype(dtype)
    keep = jnp.broadcast_to(jnp.asarray(mask) != 0, rewards.shape)
    # Masked rewards/values may hold garbage (NaN/inf); never let it into the arithmetic.
    rewards = jnp.where(keep, rewards, 0.0)
    values = jnp.where(keep, values, 0.0)

    def step(carry, xs):
        next_value, next_adv = carry
        r, v, k = xs
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        new_carry = (jnp.where(k, v, next_value), jnp.where(k, adv, next_adv))
        return new_carry, jnp.where(k, adv, 0.0)

    batch = rewards.shape[0]
    init = (jnp.zeros((batch,), dtype), jnp.zeros((batch,), dtype))
    xs = (rewards.T, values.T, keep.T)  # scan over the leading (time) axis
    _, adv_t = jax.lax.scan(step, init, xs, reverse=True)
    advantages = adv_t.T
    returns = jnp.where(keep, advantages + values, 0.0)
    return advantages, returns
