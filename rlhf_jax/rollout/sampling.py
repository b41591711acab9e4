"""Sampling rules: small functions ``(logits [B, V], key) -> tokens [B]``, and the filters they use.

Filters return logits with the excluded tokens set to ``-inf`` (so a softmax gives them
probability 0 and a categorical draw never picks them).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rlhf_jax.rollout.config import SamplingConfig

Rule = Callable[[Float[Array, "B V"], jax.Array], Int[Array, "B"]]


def greedy(logits: Float[Array, "B V"], key: jax.Array | None = None) -> Int[Array, "B"]:
    """``argmax_v logits[b, v]`` (the lowest id on ties, as ``torch.argmax``); ``key`` is unused."""
    del key
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def categorical(logits: Float[Array, "B V"], key: jax.Array) -> Int[Array, "B"]:
    """A draw from ``softmax(logits)`` per row (Gumbel-max, ``jax.random.categorical``)."""
    return jax.random.categorical(key, logits.astype(jnp.float32), axis=-1).astype(jnp.int32)


def top_k_filter(logits: Float[Array, "B V"], *, k: int) -> Float[Array, "B V"]:
    """Keep logits ``>=`` the ``k``-th largest of the row (ties at the boundary are kept)."""
    if k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits: Float[Array, "B V"], *, p: float) -> Float[Array, "B V"]:
    """Nucleus filter (Holtzman et al. 2020): sort the tokens by probability and keep token ``i``
    when the mass of the tokens ranked before it is ``< p``; i.e. the smallest prefix whose mass
    reaches ``p`` (the most likely token is always kept; ties with the last kept logit are kept)."""
    if p >= 1.0:
        return logits
    logits = logits.astype(jnp.float32)
    sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    n_keep = jnp.sum(mass_before < p, axis=-1, keepdims=True)  # >= 1
    cutoff = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


def filtered_logits(logits: Float[Array, "B V"], config: SamplingConfig) -> Float[Array, "B V"]:
    """``logits / temperature`` then the top-k and top-p filters of ``config`` (float32)."""
    x = logits.astype(jnp.float32) / jnp.float32(config.temperature)
    if config.top_k is not None:
        x = top_k_filter(x, k=config.top_k)
    if config.top_p < 1.0:
        x = top_p_filter(x, p=config.top_p)
    return x


def _filtered_categorical(logits, key, *, config: SamplingConfig):
    return categorical(filtered_logits(logits, config), key)


def make_rule(config: SamplingConfig) -> Rule:
    """The rule ``(logits, key) -> tokens`` that ``config`` describes."""
    if config.greedy:
        return greedy
    return functools.partial(_filtered_categorical, config=config)
