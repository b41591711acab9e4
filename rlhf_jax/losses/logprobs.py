"""Per-token log-probabilities, entropies and sequence log-probabilities from logits.

Logits at position ``t`` score token ``t``: the caller shifts (for a causal LM that means
``logits[:, :-1]`` with ``tokens[:, 1:]``). Everything is computed in float32 whatever the logits'
dtype (bf16 log-softmax loses about two decimal digits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Shaped

from rlhf_jax.losses.masked import as_float, masked_mean, masked_sum

__all__ = ["token_logprobs", "entropy_from_logits", "sequence_logprobs"]


def _scaled(logits: Array, temperature: float) -> Array:
    # Always divide (dividing by 1.0 is exact), so that ``temperature`` may also be a traced value.
    return as_float(logits) / temperature


def token_logprobs(
    logits: Float[Array, "B T V"], tokens: Int[Array, "B T"], *, temperature: float = 1.0
) -> Float[Array, "B T"]:
    """Log-probability of each chosen token, ``log softmax(logits / tau)[token]``.

    Computed as ``z[token] - logsumexp(z)`` with ``z = logits / tau`` in float32, which never
    materialises the full ``[B, T, V]`` log-softmax (same quantity as TRL's
    ``selective_log_softmax``). Sampling at temperature ``tau`` and scoring at the same ``tau`` keeps
    PPO ratios on-policy.

    Args:
      logits: ``[B, T, V]`` logits; position ``t`` scores ``tokens[:, t]`` (caller shifts).
      tokens: ``[B, T]`` token ids in ``[0, V)``. Padding positions may hold any id; an id out of
        range is clipped, so the value there is finite but meaningless: mask it out.
      temperature: ``tau > 0``, divides the logits.

    Returns:
      ``[B, T]`` float32 log-probabilities (per token, nothing averaged).
    """
    z = _scaled(logits, temperature)
    chosen = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
    return chosen - jax.nn.logsumexp(z, axis=-1)


def entropy_from_logits(
    logits: Float[Array, "B T V"], *, temperature: float = 1.0
) -> Float[Array, "B T"]:
    """Shannon entropy (nats) of the next-token distribution at every position.

    ``H_t = -sum_v p_v log p_v`` with ``p = softmax(logits / tau)``, in float32
    (same quantity as TRL's ``entropy_from_logits``).

    Args:
      logits: ``[B, T, V]`` logits.
      temperature: ``tau > 0``, divides the logits.

    Returns:
      ``[B, T]`` float32 entropies (per token, nothing averaged).
    """
    logp = jax.nn.log_softmax(_scaled(logits, temperature), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def sequence_logprobs(
    token_logps: Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    length_normalize: bool = False,
) -> Float[Array, "B"]:
    """Log-probability of each whole sequence (completion), ``log p(y) = sum_t m_t log p(y_t)``.

    With ``length_normalize`` the masked *mean* over tokens instead (the per-token average used by
    TRL's IPO and by SimPO). Masked-out positions never contribute, even if they hold NaN/inf.

    Args:
      token_logps: ``[B, T]`` per-token log-probs (e.g. from :func:`token_logprobs`).
      mask: ``[B, T]`` completion mask, bool or 0/1 float.
      length_normalize: average over the sequence's tokens instead of summing.

    Returns:
      ``[B]`` float32 sequence log-probabilities (one per sequence; 0 for an empty sequence).
    """
    if length_normalize:
        return masked_mean(token_logps, mask, axis=-1)
    return masked_sum(token_logps, mask, axis=-1)
