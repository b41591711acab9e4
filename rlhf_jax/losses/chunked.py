"""Log-probs, entropy, exact KL and the SFT loss from final hidden states and the LM head, over
sequence chunks: the float32 ``[B, T, V]`` logits never exist, in the forward or the backward pass.

Each function cuts the time axis into chunks of ``chunk_size`` positions and runs a ``lax.scan``
whose body is rematerialised (``jax.checkpoint``): the forward pass keeps only each chunk's per-token
results, and the backward pass recomputes one chunk's ``[B, C, V]`` logits at a time. Memory for
the vocabulary goes from ``O(B T V)`` to ``O(B C V)``; the cost is one more head matmul in the
backward pass. The values equal the array-only functions of :mod:`rlhf_jax.losses` applied to
``logits = hidden @ head`` (float32 logits, then the same float32 formulas).

The head is ``weight, tied``: the embedding ``[V, D]`` when the model ties them (``tied=True``),
else the LM head ``[D, V]``; :func:`rlhf_jax.model.head_weight` returns both for a parameter tree::

    hidden = model.apply(variables, tokens, return_hidden=True, compute_logits=False).hidden
    logp = chunked_token_logprobs(hidden[:, :-1], *head_weight(config, params), tokens[:, 1:])

The weight enters each chunk in its own dtype and is cast there to the hidden states' dtype, so a
float32 master head accumulates its gradient over the chunks in float32.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Shaped

from rlhf_jax.losses.masked import masked_mean

__all__ = ["chunked_token_logprobs", "chunked_entropy", "chunked_logprobs_and_entropy", "chunked_exact_kl",
           "chunked_nll"]

DEFAULT_CHUNK = 128


def _logits(hidden: Float[Array, "B C D"], weight: Array, tied: bool) -> Float[Array, "B C V"]:
    # Tie the head to this chunk (a no-op for the values) so that XLA cannot hoist a conversion or
    # a transposed copy of the whole [V, D] head out of the chunk loop: XLA:CPU computes bfloat16
    # matmuls in float32 and would otherwise keep a float32 copy of the head for the whole loop.
    weight, hidden = jax.lax.optimization_barrier((weight, hidden))
    w = weight.astype(hidden.dtype)
    return jnp.einsum("BCD,VD->BCV" if tied else "BCD,DV->BCV", hidden, w, preferred_element_type=jnp.float32)


def _check(hidden, weight, tied, name):
    if hidden.ndim != 3:
        raise ValueError(f"{name}: hidden must be [B, T, D], got shape {hidden.shape}")
    d = weight.shape[1] if tied else weight.shape[0]
    if weight.ndim != 2 or d != hidden.shape[-1]:
        want = "[V, D] (tied)" if tied else "[D, V] (untied)"
        raise ValueError(f"{name}: head weight {weight.shape} does not fit hidden {hidden.shape}: want {want} "
                         f"with D = {hidden.shape[-1]}")


def _over_chunks(per_chunk: Callable[..., Any], arrays: tuple, chunk_size: int):
    """``per_chunk(*chunks)`` over time chunks of every ``[B, T, ...]`` array in ``arrays``,
    rematerialised; results ``[B, C, ...]`` are concatenated back to ``[B, T, ...]``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t = arrays[0].shape[:2]
    c = min(chunk_size, t)
    pad = -t % c
    n = (t + pad) // c

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return x.reshape(b, n, c, *x.shape[2:]).swapaxes(0, 1)  # [n, B, C, ...]

    body = jax.checkpoint(per_chunk)
    _, out = jax.lax.scan(lambda _, xs: (None, body(*xs)), None, tuple(split(x) for x in arrays))
    return jax.tree_util.tree_map(lambda y: y.swapaxes(0, 1).reshape(b, n * c, *y.shape[3:])[:, :t], out)


def _token_logprobs(z, targets):
    chosen = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
    return chosen - jax.nn.logsumexp(z, axis=-1)


def _entropy(z):
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def chunked_token_logprobs(hidden: Float[Array, "B T D"], weight: Array, tied: bool, targets: Int[Array, "B T"], *,
                           temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> Float[Array, "B T"]:
    """``log softmax((hidden @ head) / tau)[target]`` per position, in float32, chunk by chunk:
    :func:`rlhf_jax.losses.token_logprobs` of the LM head's logits without the ``[B, T, V]``
    logits.

    Args:
      hidden: final hidden states ``[B, T, D]``; position ``t`` scores ``targets[:, t]`` (the
        caller shifts: ``hidden[:, :-1]`` with ``tokens[:, 1:]``).
      weight: the head, ``[V, D]`` when ``tied`` else ``[D, V]``.
      tied: whether ``weight`` is the (transposed) embedding.
      targets: ``[B, T]`` token ids (out-of-range ids are clipped: mask them out).
      temperature: ``tau > 0``, divides the logits.
      chunk_size: positions per chunk (``B * chunk_size * V`` float32 logits live at once).
    Returns:
      ``[B, T]`` float32 log-probabilities.
    """
    _check(hidden, weight, tied, "chunked_token_logprobs")
    return _over_chunks(lambda h, y: _token_logprobs(_logits(h, weight, tied) / temperature, y),
                        (hidden, targets), chunk_size)


def chunked_entropy(hidden: Float[Array, "B T D"], weight: Array, tied: bool, *, temperature: float = 1.0,
                    chunk_size: int = DEFAULT_CHUNK) -> Float[Array, "B T"]:
    """Entropy ``-sum_v p_v log p_v`` of ``softmax((hidden @ head) / tau)`` per position, float32,
    chunk by chunk (:func:`rlhf_jax.losses.entropy_from_logits` without the ``[B, T, V]`` logits).
    Arguments as :func:`chunked_token_logprobs`."""
    _check(hidden, weight, tied, "chunked_entropy")
    return _over_chunks(lambda h: _entropy(_logits(h, weight, tied) / temperature), (hidden,), chunk_size)


def chunked_logprobs_and_entropy(hidden: Float[Array, "B T D"], weight: Array, tied: bool,
                                 targets: Int[Array, "B T"], *, temperature: float = 1.0,
                                 chunk_size: int = DEFAULT_CHUNK) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """``(token log-probs, entropy)`` from ONE head matmul per chunk (PPO's policy pass needs
    both). Arguments as :func:`chunked_token_logprobs`."""
    _check(hidden, weight, tied, "chunked_logprobs_and_entropy")

    def one(h, y):
        z = _logits(h, weight, tied) / temperature
        return _token_logprobs(z, y), _entropy(z)

    return _over_chunks(one, (hidden, targets), chunk_size)


def chunked_exact_kl(hidden: Float[Array, "B T D"], ref_hidden: Float[Array, "B T D"], weight: Array, tied: bool, *,
                     ref_weight: Array | None = None, temperature: float = 1.0,
                     chunk_size: int = DEFAULT_CHUNK) -> Float[Array, "B T"]:
    """Exact ``KL(pi || pi_ref)`` over the whole vocabulary per position, float32, chunk by chunk:
    :func:`rlhf_jax.losses.exact_kl_from_logits` of ``hidden @ head`` and ``ref_hidden @
    ref_head`` without either ``[B, T, V]``.

    Args:
      hidden, ref_hidden: the policy's and the reference's final hidden states ``[B, T, D]``.
      weight, tied: the policy's head (see :func:`chunked_token_logprobs`).
      ref_weight: the reference's head (same layout); ``None``: the policy's (LoRA on a shared
        base leaves the head alone).
      temperature, chunk_size: as :func:`chunked_token_logprobs`.
    Returns:
      ``[B, T]`` per-token KL, >= 0.
    """
    _check(hidden, weight, tied, "chunked_exact_kl")
    ref_w = weight if ref_weight is None else ref_weight
    _check(ref_hidden, ref_w, tied, "chunked_exact_kl (reference)")

    def one(h, hr):
        logp = jax.nn.log_softmax(_logits(h, weight, tied) / temperature, axis=-1)
        logq = jax.nn.log_softmax(_logits(hr, ref_w, tied) / temperature, axis=-1)
        return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)

    return _over_chunks(one, (hidden, ref_hidden), chunk_size)


def chunked_nll(hidden: Float[Array, "B T D"], weight: Array, tied: bool, targets: Int[Array, "B T"],
                mask: Shaped[Array, "B T"], *, chunk_size: int = DEFAULT_CHUNK
                ) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The SFT loss: mean negative log-likelihood of ``targets`` over the positions where ``mask``
    is non-zero (a token mean), ``L = -sum_t m_t log p(y_t) / sum_t m_t``, chunk by chunk. An
    all-zero mask gives 0 with a finite gradient.

    Args:
      hidden, weight, tied, targets, chunk_size: as :func:`chunked_token_logprobs` (shifted by
        the caller).
      mask: ``[B, T]`` loss mask (completion tokens), bool or 0/1.
    Returns:
      ``(loss, {"loss": loss, "tokens": number of masked-in tokens})``.
    """
    _check(hidden, weight, tied, "chunked_nll")
    if jnp.shape(mask) != targets.shape:
        raise ValueError(f"chunked_nll: mask {jnp.shape(mask)} and targets {targets.shape} must have the same shape")
    logp = chunked_token_logprobs(hidden, weight, tied, targets, chunk_size=chunk_size)
    loss = -masked_mean(logp, mask)
    return loss, {"loss": jax.lax.stop_gradient(loss), "tokens": jnp.sum(jnp.asarray(mask) != 0)}
