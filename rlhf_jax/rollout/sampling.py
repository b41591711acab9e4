"""Sampling rules: small functions ``(logits [B, V], key) -> tokens [B]``, and the filters they use.

Filters return logits with the excluded tokens set to ``-inf`` (so a softmax gives them
probability 0 and a categorical draw never picks them).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from rlhf_jax.rollout.config import SamplingConfig

Rule = Callable[[Float[Array, "B V"], jax.Array], Int[Array, "B"]]


def greedy(logits: Float[Array, "B V"], key: jax.Array | None = None) -> Int[Array, "B"]:
    """``argmax_v logits[b, v]``, the lowest id on ties (as ``torch.argmax``); ``key`` is unused.

    Computed as the row max, then the smallest index that attains it: two plain reductions,
    several times faster on CPU than ``jnp.argmax``'s variadic (value, index) reduction.
    """
    del key
    v = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(logits == top, jnp.arange(v, dtype=jnp.int32), v), axis=-1)
    return jnp.minimum(idx, v - 1)  # a NaN row matches nothing: stay in range


def _block_size(v: int) -> int:
    """A power of two near sqrt(v) (V = 2048 -> 64)."""
    return 1 << (((v - 1).bit_length() + 1) // 2)


def _count_le(cum: Float[Array, "B M"], u: Float[Array, "B 1"], has_mass: Bool[Array, "B M"]
              ) -> Int[Array, "B"]:
    """Index of the first entry of the non-decreasing ``cum`` that exceeds ``u``, kept within the
    first and last entries with positive mass (so that float round-off never lands on a
    zero-probability entry)."""
    m = cum.shape[-1]
    iota = jnp.arange(m, dtype=jnp.int32)
    first = jnp.min(jnp.where(has_mass, iota, m - 1), axis=-1)
    last = jnp.max(jnp.where(has_mass, iota, 0), axis=-1)
    return jnp.clip(jnp.sum((cum <= u).astype(jnp.int32), axis=-1), first, last)


def categorical(logits: Float[Array, "B V"], key: jax.Array) -> Int[Array, "B"]:
    """A draw from ``softmax(logits)`` per row; tokens with logit ``-inf`` are never drawn.

    Inverse-CDF sampling: one uniform ``u`` per row, the token is the first whose cumulative
    (unnormalised) probability exceeds ``u * total``. The cumulative sum is two-level -- sums of
    blocks of ~sqrt(V) tokens, then within the chosen block -- each a small triangular matmul.
    One random number per row instead of the V of Gumbel-max (``jax.random.categorical``), which
    on CPU makes a draw ~30x cheaper. The uniform has 24 bits, so probabilities are resolved to
    ~6e-8 (Gumbel-max has a similar float32 limit).
    """
    x = logits.astype(jnp.float32)
    b, v = x.shape
    blk = _block_size(v)
    nb = -(-v // blk)
    p = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))  # in [0, 1]; -inf -> 0
    if nb * blk > v:
        p = jnp.pad(p, ((0, 0), (0, nb * blk - v)))
    pb = p.reshape(b, nb, blk)
    block_mass = jnp.sum(pb, axis=-1)  # B nb
    upper = lambda n: jnp.triu(jnp.ones((n, n), jnp.float32))  # x @ upper(n) = inclusive cumsum
    cum_blocks = block_mass @ upper(nb)
    u = jax.random.uniform(key, (b, 1), jnp.float32) * cum_blocks[:, -1:]
    bi = _count_le(cum_blocks, u, block_mass > 0)
    inner = jnp.take_along_axis(pb, bi[:, None, None], axis=1)[:, 0]  # B blk
    before = jnp.take_along_axis(cum_blocks - block_mass, bi[:, None], axis=1)
    j = _count_le(inner @ upper(blk), u - before, inner > 0)
    return bi * blk + j


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
