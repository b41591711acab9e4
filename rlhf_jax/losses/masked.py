"""Masked reductions: the one place where every loss reduces over tokens or sequences.

Masks are arrays with the same shape as the values (or broadcastable to it), holding booleans or
0/1 weights. Positions where the mask is 0 never contribute, even when the value there is NaN or
inf (padding often holds garbage), because values are selected with ``jnp.where`` before they are
multiplied by the mask. A reduction over an all-zero mask returns 0 (not NaN), and its gradient is
finite, so a fully padded micro-batch is harmless inside a jitted step.

All reductions are computed in at least float32, whatever the input dtype.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

Aggregation = Literal["token", "sequence"]

__all__ = [
    "Aggregation",
    "as_float",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "masked_max",
    "masked_min",
    "masked_aggregate",
]


def as_float(x) -> Array:
    """``x`` as a JAX array of at least float32 precision (bf16/f16/ints -> f32, f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _keep(mask, x: Array) -> Array:
    """Boolean mask broadcast to ``x``."""
    return jnp.broadcast_to(jnp.asarray(mask) != 0, jnp.shape(x))


def _clean(x: Array, mask) -> Array:
    """``x`` with masked-out entries replaced by 0, before any non-linear op.

    ``where`` alone after a non-linear op is not enough: the backward pass multiplies the zero
    cotangent by the op's derivative at the garbage value, and ``0 * nan = nan``.
    """
    return jnp.where(_keep(mask, x), x, jnp.zeros((), x.dtype))


def _weights(mask, x: Array) -> tuple[Array, Array]:
    """Mask as float weights broadcast to ``x``, and ``x`` with masked-out entries set to 0."""
    w = jnp.broadcast_to(jnp.asarray(mask).astype(x.dtype), x.shape)
    return w, jnp.where(w != 0, x, jnp.zeros((), x.dtype)) * w


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else 0; the gradient is finite in both branches."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.zeros((), num.dtype))


def masked_sum(
    x: Float[Array, "*dims"], mask: Shaped[Array, "*dims"], axis: int | tuple[int, ...] | None = None
) -> Float[Array, "*reduced"]:
    """Sum of ``x`` over the positions where ``mask`` is non-zero, ``sum(x * mask)``.

    Args:
      x: values, any shape.
      mask: same shape as ``x`` (or broadcastable), bool or 0/1 float.
      axis: axis or axes to reduce; ``None`` reduces everything.

    Returns:
      The masked sum, float32 (or float64 for float64 input), with ``axis`` removed.
    """
    x = as_float(x)
    _, xw = _weights(mask, x)
    return jnp.sum(xw, axis=axis)


def masked_mean(
    x: Float[Array, "*dims"], mask: Shaped[Array, "*dims"], axis: int | tuple[int, ...] | None = None
) -> Float[Array, "*reduced"]:
    """Mean of ``x`` over the positions where ``mask`` is non-zero: ``sum(x * m) / sum(m)``.

    Returns 0 where the mask sums to 0 (instead of NaN), with a finite gradient.

    Args:
      x: values, any shape.
      mask: same shape as ``x`` (or broadcastable), bool or 0/1 float.
      axis: axis or axes to reduce; ``None`` reduces everything (a token mean for ``[B, T]``).

    Returns:
      The masked mean, float32 (or float64 for float64 input), with ``axis`` removed.
    """
    x = as_float(x)
    w, xw = _weights(mask, x)
    return _safe_div(jnp.sum(xw, axis=axis), jnp.sum(w, axis=axis))


def masked_var(
    x: Float[Array, "*dims"],
    mask: Shaped[Array, "*dims"],
    axis: int | tuple[int, ...] | None = None,
    *,
    unbiased: bool = True,
) -> Float[Array, "*reduced"]:
    """Variance of ``x`` over the masked positions.

    ``var = mean_m((x - mean_m(x))^2)``, times Bessel's correction ``n / (n - 1)`` when
    ``unbiased`` (``n = sum(mask)``; the correction is skipped when ``n <= 1``, where the variance
    is 0 anyway). Matches TRL's ``masked_var`` wherever that one is finite.

    Args:
      x: values, any shape.
      mask: same shape as ``x`` (or broadcastable), bool or 0/1 float.
      axis: axis or axes to reduce; ``None`` reduces everything.
      unbiased: apply Bessel's correction.

    Returns:
      The masked variance, with ``axis`` removed; 0 for an all-zero mask.
    """
    x = _clean(as_float(x), mask)
    mean = masked_mean(x, mask, axis=axis)
    mean_b = mean if axis is None else jnp.expand_dims(mean, axis)
    var = masked_mean(jnp.square(x - mean_b), mask, axis=axis)
    if unbiased:
        n = jnp.sum(jnp.broadcast_to(jnp.asarray(mask).astype(x.dtype), x.shape), axis=axis)
        var = var * jnp.where(n > 1, n / jnp.where(n > 1, n - 1, 1.0), 1.0)
    return var


def masked_whiten(
    x: Float[Array, "*dims"],
    mask: Shaped[Array, "*dims"],
    *,
    shift_mean: bool = True,
    axis: int | tuple[int, ...] | None = None,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> Float[Array, "*dims"]:
    """Normalise ``x`` to zero mean and unit variance over the masked positions.

    ``(x - mean_m(x)) / sqrt(var_m(x) + eps)``, plus ``mean_m(x)`` back when ``shift_mean`` is
    False (used for rewards, where the sign/offset carries information). Masked-out positions of the
    result are 0. Statistics are over every masked position (``axis=None``, the TRL/PPO convention)
    or along ``axis``.

    Args:
      x: values, any shape (typically advantages or rewards ``[B, T]``).
      mask: same shape as ``x`` (or broadcastable), bool or 0/1 float.
      shift_mean: if False, keep the original mean (only rescale).
      axis: axes over which the statistics are taken; ``None`` means all.
      unbiased: use the unbiased variance (TRL's choice).
      eps: added to the variance before the square root.

    Returns:
      Whitened values, same shape as ``x``, at least float32, 0 where ``mask`` is 0.
    """
    x = _clean(as_float(x), mask)
    mean = masked_mean(x, mask, axis=axis)
    var = masked_var(x, mask, axis=axis, unbiased=unbiased)
    if axis is not None:
        mean, var = jnp.expand_dims(mean, axis), jnp.expand_dims(var, axis)
    whitened = (x - mean) * jnp.reciprocal(jnp.sqrt(var + eps))
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(_keep(mask, x), whitened, jnp.zeros((), x.dtype))


def masked_max(
    x: Float[Array, "*dims"], mask: Shaped[Array, "*dims"], axis: int | tuple[int, ...] | None = None
) -> Float[Array, "*reduced"]:
    """Maximum of ``x`` over the masked positions; 0 where nothing is masked in. For metrics."""
    x = as_float(x)
    keep = _keep(mask, x)
    out = jnp.max(jnp.where(keep, x, -jnp.inf), axis=axis)
    return jnp.where(jnp.any(keep, axis=axis), out, jnp.zeros((), x.dtype))


def masked_min(
    x: Float[Array, "*dims"], mask: Shaped[Array, "*dims"], axis: int | tuple[int, ...] | None = None
) -> Float[Array, "*reduced"]:
    """Minimum of ``x`` over the masked positions; 0 where nothing is masked in. For metrics."""
    return -masked_max(-as_float(x), mask, axis=axis)


def masked_aggregate(
    x: Float[Array, "B T"], mask: Shaped[Array, "B T"], *, aggregation: Aggregation = "token"
) -> Float[Array, ""]:
    """Reduce per-token values ``[B, T]`` to a scalar loss.

    - ``"token"``: mean over every real token in the batch, ``sum(x m) / sum(m)`` (long sequences
      weigh more; the TRL/OpenAI PPO convention).
    - ``"sequence"``: mean over sequences of each sequence's token mean,
      ``mean_b [sum_t x m / sum_t m]``, counting only sequences with at least one real token
      (every sequence weighs the same; the original GRPO convention).

    Args:
      x: per-token values ``[B, T]``.
      mask: ``[B, T]``, bool or 0/1 float.
      aggregation: ``"token"`` or ``"sequence"``.

    Returns:
      A scalar; 0 for an all-zero mask.
    """
    if jnp.ndim(x) != 2 or jnp.shape(mask) != jnp.shape(x):
        raise ValueError(f"masked_aggregate: values {jnp.shape(x)} and mask {jnp.shape(mask)} must both be [B, T]")
    if aggregation == "token":
        return masked_mean(x, mask)
    if aggregation == "sequence":
        per_seq = masked_mean(x, mask, axis=-1)
        has_tokens = jnp.any(_keep(mask, x), axis=-1)
        return masked_mean(per_seq, has_tokens)
    raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
