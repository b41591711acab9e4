"""Forward passes over a rollout's response (pure; jit them yourself): the logits, per-token
log-probs and hidden states that score the ``N`` generated tokens. Shared by PPO's experience pass,
the critic-free algorithms and the evaluation's KL column."""

from __future__ import annotations

from typing import Any

import jax
from jaxtyping import Array, Float, Int

from rlhf_jax.lora import lora_config_of, model_variables, outer_params
from rlhf_jax.losses import (chunked_exact_kl, chunked_logprobs_and_entropy, chunked_token_logprobs,
                             entropy_from_logits, exact_kl_from_logits, token_logprobs)
from rlhf_jax.model import ModelConfig, Transformer, head_weight, lm_logits

PyTree = Any

AUTO_CHUNK = 128
"""Positions per chunk of the LM head when ``logit_chunk=None`` (auto) chunks."""
AUTO_CHUNK_BYTES = 1 << 30
"""``logit_chunk=None`` chunks once a pass's float32 ``[B, N, V]`` logits would exceed this (1 GiB):
below it the whole-logit path is as fast or faster on CPU (one head matmul, no scan; see
experiments/aot_memory.py for what chunking saves on real shapes)."""


def response_slice(x: Array, n: int) -> Array:
    """Outputs at positions ``P-1 .. P+N-2`` of a ``[B, P+N, ...]`` array: the ones that predict
    (or value) the ``N`` response tokens."""
    p = x.shape[1] - n
    return jax.lax.slice_in_dim(x, p - 1, p - 1 + n, axis=1)


def response_hidden(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                    tokens: Int[Array, "B S"], attention_mask: Int[Array, "B S"], n: int) -> Float[Array, "B N D"]:
    """Final hidden states at the positions that predict the last ``n`` tokens, for the model
    ``base`` + ``trainable`` (an adapter, a full tree, or ``None``: the base alone)."""
    model = Transformer(model_config, lora=lora_config_of(trainable))
    hidden = model.apply(model_variables(base, trainable), tokens, attention_mask=attention_mask,
                         return_hidden=True, compute_logits=False).hidden
    return response_slice(hidden, n)


def response_logits(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                    tokens: Int[Array, "B S"], attention_mask: Int[Array, "B S"], n: int) -> Float[Array, "B N V"]:
    """float32 logits that score the last ``n`` tokens (the LM head on those positions only)."""
    return lm_logits(model_config, outer_params(base, trainable), response_hidden(model_config, trainable, base, tokens, attention_mask, n))


def response_logprobs(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                      tokens: Int[Array, "B S"], attention_mask: Int[Array, "B S"], n: int, *,
                      temperature: float = 1.0) -> Float[Array, "B N"]:
    """``log softmax(logits / temperature)[token]`` of each of the last ``n`` tokens (float32)."""
    logits = response_logits(model_config, trainable, base, tokens, attention_mask, n)
    return token_logprobs(logits, tokens[:, tokens.shape[1] - n:], temperature=temperature)


def logit_chunk_size(chunk: int | None, rows: int, positions: int, vocab: int) -> int:
    """The chunk size a training option ``logit_chunk`` means for ``[rows, positions]`` targets:
    ``0`` (the whole float32 logits at once) or positions per chunk
    (:mod:`rlhf_jax.losses.chunked`). ``None`` (auto): :data:`AUTO_CHUNK` when the float32 logits
    would exceed :data:`AUTO_CHUNK_BYTES`, else 0."""
    if chunk is None:
        return AUTO_CHUNK if rows * positions * vocab * 4 > AUTO_CHUNK_BYTES else 0
    return int(chunk)


def head_of(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None) -> tuple[Array, bool]:
    """``(weight, tied)``: the LM head of ``base`` + ``trainable`` (for the chunked losses)."""
    return head_weight(model_config, outer_params(base, trainable))


def response_logprobs_entropy(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                              tokens: Int[Array, "B S"], attention_mask: Int[Array, "B S"], n: int, *,
                              temperature: float = 1.0, entropy: bool = False, chunk: int | None = None
                              ) -> tuple[Float[Array, "B N"], Float[Array, "B N"] | None, Float[Array, "B N D"]]:
    """``(log-probs, entropy or None, hidden)`` of the last ``n`` tokens, float32: from the whole
    ``[B, N, V]`` logits, or with ``chunk`` (see :func:`logit_chunk_size`) from the hidden states
    and the head chunk by chunk (equal within float rounding; gradients too). ``hidden`` is
    returned for a caller that needs it again (the exact KL)."""
    hidden = response_hidden(model_config, trainable, base, tokens, attention_mask, n)
    logp, ent = hidden_logprobs_entropy(model_config, trainable, base, hidden, tokens[:, tokens.shape[1] - n:],
                                        temperature=temperature, entropy=entropy, chunk=chunk)
    return logp, ent, hidden


def hidden_logprobs_entropy(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                            hidden: Float[Array, "B N D"], targets: Int[Array, "B N"], *, temperature: float = 1.0,
                            entropy: bool = False, chunk: int | None = None
                            ) -> tuple[Float[Array, "B N"], Float[Array, "B N"] | None]:
    """``(log-probs, entropy or None)`` of ``targets`` from the hidden states that predict them and
    the head of ``base`` + ``trainable``, float32: whole logits or, with ``chunk`` (see
    :func:`logit_chunk_size`), chunk by chunk (equal within float rounding; gradients too)."""
    c = logit_chunk_size(chunk, hidden.shape[0], hidden.shape[1], model_config.vocab_size)
    if c:
        w, tied = head_of(model_config, trainable, base)
        if entropy:
            return chunked_logprobs_and_entropy(hidden, w, tied, targets, temperature=temperature, chunk_size=c)
        return chunked_token_logprobs(hidden, w, tied, targets, temperature=temperature, chunk_size=c), None
    logits = lm_logits(model_config, outer_params(base, trainable), hidden)
    ent = entropy_from_logits(logits, temperature=temperature) if entropy else None
    return token_logprobs(logits, targets, temperature=temperature), ent


def response_exact_kl(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                      hidden: Float[Array, "B N D"], ref_hidden: Float[Array, "B N D"], *,
                      temperature: float = 1.0, chunk: int | None = None) -> Float[Array, "B N"]:
    """Exact per-token ``KL(policy || base)`` over the vocabulary from both models' response
    hidden states (the policy's head: ``base`` + ``trainable``; the reference's: ``base``), whole
    or chunked like :func:`response_logprobs_entropy`."""
    c = logit_chunk_size(chunk, hidden.shape[0], hidden.shape[1], model_config.vocab_size)
    pol, ref = outer_params(base, trainable), base
    if c:
        (w, tied), (rw, _) = head_weight(model_config, pol), head_weight(model_config, ref)
        return chunked_exact_kl(hidden, ref_hidden, w, tied, ref_weight=rw, temperature=temperature, chunk_size=c)
    return exact_kl_from_logits(lm_logits(model_config, pol, hidden), lm_logits(model_config, ref, ref_hidden),
                                temperature=temperature)
