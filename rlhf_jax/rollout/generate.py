"""Batched generation with a KV cache: prefill the left-padded prompts once, then decode one token
per step in a ``lax.while_loop`` over a preallocated response buffer.

``generate`` is not jitted here (STYLE #9): jit it yourself with the model and config closed over,
or use :class:`rlhf_jax.rollout.Sampler`, which does that once per shape.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from rlhf_jax.losses.logprobs import token_logprobs
from rlhf_jax.model.cache import KVCache, init_cache
from rlhf_jax.model.config import ModelConfig
from rlhf_jax.rollout.config import SamplingConfig
from rlhf_jax.rollout.sampling import make_rule


class Rollout(NamedTuple):
    """Prompts and their sampled responses. ``P`` prompt length (left padded), ``N`` =
    ``max_new_tokens``; the response of row ``b`` is ``tokens[b, P:P + lengths[b]]``."""

    tokens: Int[Array, "B P+N"]
    """Prompt then response token ids; after a row finishes (and in the prompt's left padding)
    the pad id."""
    attention_mask: Int[Array, "B P+N"]
    """1 for real tokens: the prompt mask followed by ``response_mask``."""
    response_mask: Int[Array, "B N"]
    """1 for every generated token up to and including the EOS token, 0 after it."""
    lengths: Int[Array, "B"]
    """Number of generated tokens per row (including the EOS token): ``response_mask.sum(-1)``."""
    eos_reached: Bool[Array, "B"]
    """Whether the row ended with an EOS token (``False``: it was cut at ``max_new_tokens``)."""
    logprobs: Float[Array, "B N"]
    """float32 ``log softmax(logits / temperature)[token]`` of each generated token over the FULL
    vocabulary, i.e. *before* top-k / top-p filtering (this is what a training forward pass
    recomputes, so it is PPO's "old" log-prob; with filtering on it is not the log-probability of
    the filtered distribution that the token was drawn from). 0 where ``response_mask`` is 0."""

    @property
    def prompt_length(self) -> int:
        return self.tokens.shape[1] - self.response_mask.shape[1]

    @property
    def response_tokens(self) -> Int[Array, "B N"]:
        return self.tokens[:, self.prompt_length:]


def check_lengths(prompt_length: int, max_new_tokens: int, model_config: ModelConfig) -> None:
    """Raise when ``prompt_length + max_new_tokens`` exceeds the model's position range."""
    total = prompt_length + max_new_tokens
    if total > model_config.max_position_embeddings:
        raise ValueError(
            f"prompt length {prompt_length} + max_new_tokens {max_new_tokens} = {total} exceeds the "
            f"model's max_position_embeddings = {model_config.max_position_embeddings}; shorten the "
            "prompts (or their bucket) or lower max_new_tokens")


class _Loop(NamedTuple):
    step: Int[Array, ""]
    response: Int[Array, "B N"]
    logprobs: Float[Array, "B N"]
    lengths: Int[Array, "B"]
    done: Bool[Array, "B"]
    last: Int[Array, "B"]  # the token fed at this step
    last_mask: Int[Array, "B"]
    cache: KVCache


def token_logprob(logits: Float[Array, "B V"], tokens: Int[Array, "B"], temperature: float
                  ) -> Float[Array, "B"]:
    """``log softmax(logits / temperature)[b, tokens[b]]`` in float32: one decode step of
    :func:`rlhf_jax.losses.token_logprobs` (the same formula a training forward pass uses)."""
    return token_logprobs(logits[:, None], tokens[:, None], temperature=temperature)[:, 0]


def generate(variables: dict, prompt_tokens: Int[Array, "B P"], prompt_mask: Int[Array, "B P"],
             key: jax.Array, *, model, config: SamplingConfig) -> Rollout:
    """Sample up to ``config.max_new_tokens`` tokens after each LEFT-padded prompt.

    The prompt minus its last token is prefilled into a KV cache in one pass (no logits); each
    loop step then feeds one token (first the prompt's last one) and samples the next with the
    rule of ``config`` and the key ``fold_in(key, step)``. A row stops after an EOS token; from
    then on it emits the pad id with mask 0. The loop exits when every row is done or after
    ``max_new_tokens`` steps.

    Args:
      variables: ``{"params": base}`` (the base model) or ``{"params": base, "lora": adapter}``.
      prompt_tokens: ``[B, P]`` token ids, left padded (every row's last token is real).
      prompt_mask: ``[B, P]``, 1 for real prompt tokens.
      key: a PRNG key (unused when ``config.greedy``).
      model: the :class:`rlhf_jax.model.Transformer` (built with a ``LoraConfig`` when an adapter
        is passed).
      config: the :class:`SamplingConfig`.
    Returns:
      a :class:`Rollout`.
    """
    mc: ModelConfig = model.config
    eos_ids, pad_id = config.resolve(mc)
    b, p = prompt_tokens.shape
    n = config.max_new_tokens
    check_lengths(p, n, mc)
    rule = make_rule(config)
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    prompt_mask = prompt_mask.astype(jnp.int32)
    prompt_tokens = jnp.where(prompt_mask > 0, prompt_tokens, pad_id)

    # Slots for every token fed to the model: the prompt and all sampled tokens but the last.
    cache = init_cache(mc, b, p + n - 1)
    if p > 1:
        cache = model.apply(variables, prompt_tokens[:, :-1], attention_mask=prompt_mask[:, :-1],
                            cache=cache, compute_logits=False).cache
    eos = jnp.asarray(eos_ids, jnp.int32)

    def cond(s: _Loop):
        return (s.step < n) & ~jnp.all(s.done)

    def body(s: _Loop) -> _Loop:
        out = model.apply(variables, s.last[:, None], attention_mask=s.last_mask[:, None], cache=s.cache)
        logits = out.logits[:, 0]
        tok = rule(logits, jax.random.fold_in(key, s.step))
        lp = token_logprob(logits, tok, config.temperature)
        live = ~s.done
        tok = jnp.where(live, tok, pad_id)
        lp = jnp.where(live, lp, 0.0)
        hit_eos = jnp.any(tok[:, None] == eos[None, :], axis=-1) if eos_ids else jnp.zeros_like(live)
        return _Loop(step=s.step + 1,
                     response=jax.lax.dynamic_update_slice(s.response, tok[:, None], (0, s.step)),
                     logprobs=jax.lax.dynamic_update_slice(s.logprobs, lp[:, None], (0, s.step)),
                     lengths=s.lengths + live.astype(jnp.int32),
                     done=s.done | (live & hit_eos),
                     last=tok, last_mask=live.astype(jnp.int32), cache=out.cache)

    init = _Loop(step=jnp.zeros((), jnp.int32), response=jnp.full((b, n), pad_id, jnp.int32),
                 logprobs=jnp.zeros((b, n), jnp.float32), lengths=jnp.zeros((b,), jnp.int32),
                 done=jnp.zeros((b,), bool), last=prompt_tokens[:, -1], last_mask=prompt_mask[:, -1],
                 cache=cache)
    s = jax.lax.while_loop(cond, body, init)
    response_mask = (jnp.arange(n)[None, :] < s.lengths[:, None]).astype(jnp.int32)
    return Rollout(tokens=jnp.concatenate([prompt_tokens, s.response], axis=1),
                   attention_mask=jnp.concatenate([prompt_mask, response_mask], axis=1),
                   response_mask=response_mask, lengths=s.lengths, eos_reached=s.done,
                   logprobs=s.logprobs)
