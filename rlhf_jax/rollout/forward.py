"""Forward passes over a rollout's response (pure; jit them yourself): the logits, per-token
log-probs and hidden states that score the ``N`` generated tokens. Shared by PPO's experience pass,
the critic-free algorithms and the evaluation's KL column."""

from __future__ import annotations

from typing import Any

import jax
from jaxtyping import Array, Float, Int

from rlhf_jax.lora import lora_config_of, model_variables, outer_params
from rlhf_jax.losses import token_logprobs
from rlhf_jax.model import ModelConfig, Transformer, lm_logits

PyTree = Any


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
