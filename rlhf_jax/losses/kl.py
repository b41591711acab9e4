"""KL divergence between the policy and the reference model: per-token estimators and the exact
full-vocabulary value.

Estimators follow J. Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html). With samples ``y ~ pi`` (the policy) and the log-ratio
``d = log pi(y) - log pi_ref(y)``:

- ``k1 = d``: unbiased for KL(pi || pi_ref), high variance, can be negative per token.
- ``k2 = d^2 / 2``: biased (low bias when pi is close to pi_ref), low variance, >= 0.
- ``k3 = exp(-d) - 1 + d``: unbiased and low variance, >= 0 (Schulman's recommended estimator).
"""

from __future__ import annotations

from typing import Literal

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
    masked_sum,
)

Estimator = Literal["k1", "k2", "k3"]

__all__ = ["Estimator", "kl_penalty", "exact_kl_from_logits", "kl_loss"]


def kl_penalty(
    logp: Float[Array, "B T"],
    ref_logp: Float[Array, "B T"],
    *,
    estimator: Estimator = "k1",
    clamp: float | None = None,
) -> Float[Array, "B T"]:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs.

    With ``d = logp - ref_logp`` (optionally clamped to ``[-clamp, clamp]`` first, which keeps
    ``exp`` finite for k3):

        k1 = d,    k2 = d^2 / 2,    k3 = exp(-d) - 1 + d.

    Used as the per-token reward penalty ``-beta * KL_t`` in RLHF PPO (Ziegler et al. 2019,
    "Fine-Tuning Language Models from Human Preferences"; Ouyang et al. 2022, InstructGPT).
    Computed in float32.

    Args:
      logp: ``[B, T]`` policy log-probs of the sampled tokens.
      ref_logp: ``[B, T]`` reference log-probs of the same tokens.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      clamp: if given, clamp the log-ratio ``d`` to ``[-clamp, clamp]`` before the estimator.

    Returns:
      ``[B, T]`` per-token KL estimates (nothing averaged; mask before reducing).
    """
    chex.assert_equal_shape([logp, ref_logp])
    d = as_float(logp) - as_float(ref_logp)
    if clamp is not None:
        d = jnp.clip(d, -clamp, clamp)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        # exp(-d) - 1 + d, written with expm1 for accuracy when d is small.
        return jnp.expm1(-d) + d
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


def exact_kl_from_logits(
    logits: Float[Array, "B T V"],
    ref_logits: Float[Array, "B T V"],
    *,
    temperature: float = 1.0,
) -> Float[Array, "B T"]:
    """Exact KL(pi || pi_ref) of the next-token distributions at every position.

    ``KL_t = sum_v p_v (log p_v - log q_v)`` with ``p = softmax(logits / tau)`` and
    ``q = softmax(ref_logits / tau)``, summed over the whole vocabulary in float32. No sampling
    noise, at the cost of touching ``[B, T, V]``.

    Args:
      logits: ``[B, T, V]`` policy logits.
      ref_logits: ``[B, T, V]`` reference logits.
      temperature: ``tau > 0``, divides both sets of logits.

    Returns:
      ``[B, T]`` per-token KL, >= 0 (nothing averaged; mask before reducing).
    """
    chex.assert_equal_shape([logits, ref_logits])
    logp = jax.nn.log_softmax(as_float(logits) / temperature, axis=-1)
    logq = jax.nn.log_softmax(as_float(ref_logits) / temperature, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_loss(
    logp: Float[Array, "B T"],
    ref_logp: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    estimator: Estimator = "k3",
    clamp: float | None = None,
    aggregation: Aggregation = "token",
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """KL to the reference as a loss term (GRPO-style), ``L = mean_m KL_t``.

    ``KL_t`` is :func:`kl_penalty` with the given estimator. The default is k3 because it is
    non-negative and its gradient pulls ``pi`` towards ``pi_ref``; the gradient of the k1 *loss*
    has zero expectation under on-policy samples, so k1 is only meaningful as a reward penalty.
    Multiply by your coefficient ``beta`` yourself.

    Args:
      logp: ``[B, T]`` policy log-probs of the sampled tokens (carries the gradient).
      ref_logp: ``[B, T]`` reference log-probs (treated as a constant by the caller).
      mask: ``[B, T]`` completion mask, bool or 0/1 float.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      clamp: optional clamp of the log-ratio, see :func:`kl_penalty`.
      aggregation: ``"token"`` (mean over all real tokens, default) or ``"sequence"`` (mean over
        sequences of each sequence's token mean).

    Returns:
      ``(loss, metrics)``: the scalar loss and ``{"kl": loss, "kl_max": max token KL,
      "kl_per_sequence": mean over sequences of the summed KL}``.
    """
    chex.assert_equal_shape([logp, ref_logp, mask])
    keep = jnp.asarray(mask) != 0
    # Padding may hold garbage log-probs; exp() of it would poison the gradient (0 * inf = nan).
    logp = jnp.where(keep, as_float(logp), 0.0)
    ref_logp = jnp.where(keep, as_float(ref_logp), 0.0)
    kl = kl_penalty(logp, ref_logp, estimator=estimator, clamp=clamp)
    loss = masked_aggregate(kl, mask, aggregation=aggregation)
    has_tokens = jnp.any(keep, axis=-1)
    per_seq = masked_sum(kl, mask, axis=-1)
    metrics = {
        "kl": loss,
        "kl_max": masked_max(kl, mask),
        "kl_per_sequence": masked_mean(per_seq, has_tokens),
    }
    return loss, jax.lax.stop_gradient(metrics)
