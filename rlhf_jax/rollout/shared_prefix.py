"""The prompt computed once per group: forward passes over ``G`` completions of each prompt that
compute the prompt's keys and values ONCE (with gradient) and let every completion of its group
attend to them. Reward-model pairs / K-way rankings, DPO pairs and GRPO / RLOO groups all score
several completions of one prompt; computing the prompt once saves ``(G - 1) * P`` token passes
per group (a 256-token prompt with two 64-token completions: 384 instead of 640 positions).

Layout (the same for every function here):

- ``prompt_tokens``, ``prompt_mask``: ``[B, P]``, LEFT padded (each prompt's last token at
  ``P - 1``; an all-padding row is allowed but then nothing predicts its first completion token);
- ``completion_tokens``, ``completion_mask``: ``[B*G, N]``, RIGHT padded, group-major: row
  ``b * G + g`` is completion ``g`` of prompt ``b`` (``x.reshape(B * G, N)`` of a ``[B, G, N]``
  array).

Every output equals the plain forward pass over the concatenated sequences ``prompt + completion``
(:func:`rlhf_jax.rollout.response_logits` & co. on ``[B*G, P+N]``), values and gradients, to float
rounding (``tests/test_shared_prefix.py``: 1e-5).

How: only the model's public calling convention with an explicit KV cache
(:func:`rlhf_jax.model.init_cache`, ``Transformer.apply(..., cache=...)`` returning the updated
cache, as :func:`rlhf_jax.rollout.generate` prefills a prompt). The prompt is prefilled into a
``P``-slot cache of ``B`` rows (differentiably: the cache is an ordinary array result), the cache
is given ``N`` empty slots and repeated ``G`` times along its batch axis, and the completions run
against it: each completion token sees the real prompt tokens and the earlier tokens of its own
completion, at positions counted on from the prompt's length. The gradient of the repeat sums the
``G`` completions' contributions into the one prompt computation.

The first completion token is predicted from the PROMPT's last position, which the completion
pass does not compute: :func:`grouped_hidden` returns ``N + 1`` positions per completion, the
prompt's last hidden state (repeated per group) followed by the completion's own, and the
``response`` functions take the ``N`` that predict completion tokens ``0 .. N-1``.

Pure functions; jit them yourself (STYLE #9). LoRA dropout (``key``) draws its masks per pass,
so with dropout on the result is a different random draw from the unshared pass's.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rlhf_jax.lora import lora_config_of, model_variables, outer_params
from rlhf_jax.losses import token_logprobs
from rlhf_jax.model import ModelConfig, Transformer, init_cache, lm_logits

PyTree = Any

__all__ = ["grouped_hidden", "grouped_response_hidden", "grouped_response_logits", "grouped_response_logprobs",
           "repeat_cache", "extend_cache"]


@functools.lru_cache(maxsize=64)
def _cache_axes(model_config: ModelConfig) -> tuple[list[int | None], list[int | None]]:
    """Per cache leaf: its batch axis and its slot axis (``None`` for neither), found from the
    shapes :func:`init_cache` gives for two batch sizes and two lengths, so nothing here depends
    on how the cache lays out its buffers."""
    shapes = lambda b, s: [x.shape for x in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: init_cache(model_config, b, s)))]
    ref, more_rows, more_slots = shapes(1, 3), shapes(2, 3), shapes(1, 5)

    def axis(a, b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return diff[0] if diff else None

    return ([axis(r, m) for r, m in zip(ref, more_rows)], [axis(r, m) for r, m in zip(ref, more_slots)])


def repeat_cache(model_config: ModelConfig, cache, repeats: int):
    """The cache with each row repeated ``repeats`` times along the batch axis (row ``b`` becomes
    rows ``b * repeats .. b * repeats + repeats - 1``)."""
    batch_axes, _ = _cache_axes(model_config)
    leaves, tree = jax.tree_util.tree_flatten(cache)
    out = [x if ax is None else jnp.repeat(x, repeats, axis=ax) for x, ax in zip(leaves, batch_axes)]
    return jax.tree_util.tree_unflatten(tree, out)


def extend_cache(model_config: ModelConfig, cache, extra_slots: int):
    """The cache with ``extra_slots`` empty slots appended (zeros, masked out): room for the
    tokens that will attend to what it holds."""
    _, slot_axes = _cache_axes(model_config)
    leaves, tree = jax.tree_util.tree_flatten(cache)

    def pad(x, ax):
        if ax is None or extra_slots == 0:
            return x
        widths = [(0, 0)] * x.ndim
        widths[ax] = (0, extra_slots)
        return jnp.pad(x, widths)

    return jax.tree_util.tree_unflatten(tree, [pad(x, ax) for x, ax in zip(leaves, slot_axes)])


def _check(prompt_tokens, prompt_mask, completion_tokens, completion_mask, group_size):
    b, p = prompt_tokens.shape
    bg, n = completion_tokens.shape
    if prompt_mask.shape != (b, p) or completion_mask.shape != (bg, n):
        raise ValueError(f"shared prefix: masks {prompt_mask.shape} / {completion_mask.shape} do not match the tokens "
                         f"{(b, p)} / {(bg, n)}")
    if group_size < 1 or bg != b * group_size:
        raise ValueError(f"shared prefix: {bg} completion rows are not {b} prompts x group_size {group_size}; lay the "
                         "completions out group-major ([B, G, N].reshape(B * G, N))")
    if p < 1 or n < 1:
        raise ValueError(f"shared prefix: empty prompt ({p}) or completion ({n}) axis; pad to at least one column")


def grouped_hidden(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                   prompt_tokens: Int[Array, "B P"], prompt_mask: Int[Array, "B P"],
                   completion_tokens: Int[Array, "BG N"], completion_mask: Int[Array, "BG N"], *,
                   group_size: int, key: jax.Array | None = None, scan_cache: str = "layers"
                   ) -> Float[Array, "BG N+1 D"]:
    """Final hidden states of each completion with its prompt computed once per group.

    Position 0 is the prompt's last token (the same for the ``G`` rows of a group); position
    ``j + 1`` is completion token ``j``. A score head reads position ``length`` (the last real
    token; the prompt's when the completion is empty); language-model log-probs read positions
    ``0 .. N-1`` (:func:`grouped_response_hidden`).

    Args:
      model_config: the model.
      trainable: an :class:`rlhf_jax.lora.Adapter`, a full parameter tree, or ``None`` (the base).
      base: the frozen base (see :func:`rlhf_jax.lora.model_variables`).
      prompt_tokens, prompt_mask: ``[B, P]``, left padded.
      completion_tokens, completion_mask: ``[B*G, N]``, right padded, group-major.
      group_size: ``G``, completions per prompt.
      key: LoRA dropout key (``None``: deterministic).
      scan_cache: ``"layers"`` (default) for a pass under a gradient: memory linear in depth;
        ``"carry"`` for a pass without one (the cache written in place: one copy of it instead of
        two). See ``Transformer.__call__``.
    Returns:
      ``[B*G, N+1, D]`` hidden states in the model's dtype.
    """
    _check(prompt_tokens, prompt_mask, completion_tokens, completion_mask, group_size)
    b, p = prompt_tokens.shape
    n = completion_tokens.shape[1]
    model = Transformer(model_config, lora=lora_config_of(trainable))
    variables = model_variables(base, trainable)

    def kw(i):
        if key is None:
            return {}
        return {"deterministic": False, "rngs": {"dropout": jax.random.fold_in(key, i)}}

    # scan_cache="layers": under a gradient the layer scan keeps one layer's keys/values per layer
    # (carrying the whole stacked cache would keep all of it per layer: memory quadratic in depth);
    # without a gradient "carry" writes the cache in place
    prefill = model.apply(variables, prompt_tokens, attention_mask=prompt_mask, cache=init_cache(model_config, b, p),
                          scan_cache=scan_cache, return_hidden=True, compute_logits=False, **kw(0))
    cache = repeat_cache(model_config, extend_cache(model_config, prefill.cache, n), group_size)
    out = model.apply(variables, completion_tokens, attention_mask=completion_mask, cache=cache, scan_cache=scan_cache,
                      return_hidden=True, compute_logits=False, **kw(1))
    last = jnp.repeat(prefill.hidden[:, -1:], group_size, axis=0)
    return jnp.concatenate([last, out.hidden], axis=1)


def grouped_response_hidden(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                            prompt_tokens: Int[Array, "B P"], prompt_mask: Int[Array, "B P"],
                            completion_tokens: Int[Array, "BG N"], completion_mask: Int[Array, "BG N"], *,
                            group_size: int, key: jax.Array | None = None,
                            scan_cache: str = "layers") -> Float[Array, "BG N D"]:
    """Hidden states at the positions that PREDICT each completion token (the prompt's last, then
    the completion's first ``N - 1``): :func:`rlhf_jax.rollout.response_hidden` of the
    concatenated sequences, with the prompt computed once per group (``scan_cache`` as in
    :func:`grouped_hidden`)."""
    hidden = grouped_hidden(model_config, trainable, base, prompt_tokens, prompt_mask, completion_tokens,
                            completion_mask, group_size=group_size, key=key, scan_cache=scan_cache)
    return hidden[:, :-1]


def grouped_response_logits(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                            prompt_tokens: Int[Array, "B P"], prompt_mask: Int[Array, "B P"],
                            completion_tokens: Int[Array, "BG N"], completion_mask: Int[Array, "BG N"], *,
                            group_size: int, key: jax.Array | None = None) -> Float[Array, "BG N V"]:
    """float32 logits that score each completion token (the LM head on those positions only)."""
    hidden = grouped_response_hidden(model_config, trainable, base, prompt_tokens, prompt_mask, completion_tokens,
                                     completion_mask, group_size=group_size, key=key)
    return lm_logits(model_config, outer_params(base, trainable), hidden)


def grouped_response_logprobs(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                              prompt_tokens: Int[Array, "B P"], prompt_mask: Int[Array, "B P"],
                              completion_tokens: Int[Array, "BG N"], completion_mask: Int[Array, "BG N"], *,
                              group_size: int, temperature: float = 1.0,
                              key: jax.Array | None = None) -> Float[Array, "BG N"]:
    """``log softmax(logits / temperature)[token]`` of each completion token (float32; padding
    positions hold finite values: mask them with ``completion_mask``)."""
    logits = grouped_response_logits(model_config, trainable, base, prompt_tokens, prompt_mask, completion_tokens,
                                     completion_mask, group_size=group_size, key=key)
    return token_logprobs(logits, completion_tokens, temperature=temperature)
