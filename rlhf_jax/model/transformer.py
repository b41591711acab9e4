"""The decoder-only transformer (Llama family incl. Qwen2, and GPT-2) as a Flax linen module.

``model.apply({"params": base, "lora": lora}, tokens, attention_mask=..., cache=...)`` is a pure
function of explicit pytrees. Leave ``"lora"`` out to get the base model. Batches may be
left-padded: positions come from the attention mask, padded slots are never attended to.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from rlhf_jax.lora import LoraConfig
from rlhf_jax.model.cache import KVCache
from rlhf_jax.model.config import ModelConfig
from rlhf_jax.model.layers import Dense, LayerNorm, RMSNorm, activation, apply_rope, rope_frequencies

_NEG = -1e30  # finite "minus infinity": a fully masked row softmaxes to uniform, never NaN


class ModelOutput(NamedTuple):
    logits: Float[Array, "B T V"] | None
    """float32 next-token logits (``None`` when ``compute_logits=False``)."""
    hidden: Float[Array, "B T D"] | None
    """Final hidden states after the last norm (when ``return_hidden=True``)."""
    cache: KVCache | None
    """The updated cache (when a cache was passed)."""


def positions_from_mask(attention_mask: Int[Array, "B T"], offset: Int[Array, "B"] | int = 0
                        ) -> Int[Array, "B T"]:
    """Position of each token = number of real tokens before it (left padding gets 0)."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0) + jnp.asarray(offset, jnp.int32)[..., None]


def positions_from_segments(segment_ids: Int[Array, "B T"]) -> Int[Array, "B T"]:
    """Position of each token inside its packed segment: 0 at the first token of every run of
    equal segment ids (packing concatenates examples into one row; each restarts at 0)."""
    t = segment_ids.shape[-1]
    idx = jnp.arange(t, dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
                            axis=-1)
    first = jax.lax.cummax(jnp.where(start, idx[None, :], 0), axis=1)
    return idx[None, :] - first


def attend(q: Float[Array, "B T N H"], k: Float[Array, "B K S H"], v: Float[Array, "B K S H"],
           visible: Bool[Array, "B T S"]) -> Float[Array, "B T N H"]:
    """Grouped-query scaled dot-product attention; softmax in float32. Keys and values are laid
    out ``[B, K, S, H]`` (the KV cache's layout), so a decode step reads the cache without a
    transpose."""
    b, t, n, h = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum("BTKGH,BKSH->BKGTS", qg, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(h))
    scores = jnp.where(visible[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BKSH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)


class Attention(nn.Module):
    config: ModelConfig
    lora: LoraConfig | None = None

    layer: int = 0

    @nn.compact
    def __call__(self, x, positions, visible, kv_cache, write_index, deterministic=True):
        """``kv_cache``: ``None`` or this layer's ``(keys, values)`` buffers ``[B, K, S, H]``; the
        new keys/values are written in place (``dynamic_update_slice``) and the buffers returned."""
        c = self.config
        dt = c.jnp_dtype
        b, t, _ = x.shape
        n, kv, h = c.num_heads, c.num_kv_heads, c.head_dim
        dense = lambda f, bias, name: Dense(f, use_bias=bias, dtype=dt, lora=self.lora, name=name)
        if c.arch == "gpt2":
            qkv = dense(3 * n * h, True, "c_attn")(x, deterministic)
            q, k, v = jnp.split(qkv, 3, axis=-1)
        else:
            q = dense(n * h, c.qkv_bias, "q_proj")(x, deterministic)
            k = dense(kv * h, c.qkv_bias, "k_proj")(x, deterministic)
            v = dense(kv * h, c.qkv_bias, "v_proj")(x, deterministic)
        q, k, v = q.reshape(b, t, n, h), k.reshape(b, t, kv, h), v.reshape(b, t, kv, h)
        if c.arch == "llama":
            inv_freq = rope_frequencies(c)
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # B K T H
        new_cache = None
        if kv_cache is not None:
            ck, cv = kv_cache
            at = (0, 0, write_index, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), at)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), at)
            new_cache = (ck, cv)
            k, v = ck.astype(dt), cv.astype(dt)
        out = attend(q, k, v, visible).reshape(b, t, n * h)
        if c.arch == "gpt2":
            out = dense(c.hidden_size, True, "c_proj")(out, deterministic)
        else:
            out = dense(c.hidden_size, c.o_bias, "o_proj")(out, deterministic)
        return out, new_cache


class MLP(nn.Module):
    config: ModelConfig
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.config
        dt = c.jnp_dtype
        act = activation(c.activation)
        if c.arch == "gpt2":
            hdn = act(Dense(c.intermediate_size, use_bias=True, dtype=dt, lora=self.lora, name="c_fc")(x, deterministic))
            return Dense(c.hidden_size, use_bias=True, dtype=dt, lora=self.lora, name="c_proj")(hdn, deterministic)
        gate = Dense(c.intermediate_size, use_bias=c.mlp_bias, dtype=dt, lora=self.lora, name="gate_proj")(x, deterministic)
        up = Dense(c.intermediate_size, use_bias=c.mlp_bias, dtype=dt, lora=self.lora, name="up_proj")(x, deterministic)
        return Dense(c.hidden_size, use_bias=c.mlp_bias, dtype=dt, lora=self.lora, name="down_proj")(act(gate) * up, deterministic)


def _norm(config: ModelConfig, name: str):
    if config.arch == "gpt2":
        return LayerNorm(eps=config.norm_eps, dtype=config.jnp_dtype, name=name)
    return RMSNorm(eps=config.norm_eps, dtype=config.jnp_dtype, name=name)


class Block(nn.Module):
    config: ModelConfig
    lora: LoraConfig | None = None
    layer: int = 0

    @nn.compact
    def __call__(self, x, positions, visible, kv_cache, write_index, deterministic=True):
        attn_out, new_cache = Attention(self.config, self.lora, self.layer, name="attn")(
            _norm(self.config, "attn_norm")(x), positions, visible, kv_cache, write_index, deterministic)
        x = x + attn_out
        x = x + MLP(self.config, self.lora, name="mlp")(_norm(self.config, "mlp_norm")(x), deterministic)
        return x, new_cache


class Transformer(nn.Module):
    """Decoder-only language model; see the module docstring for the calling convention."""

    config: ModelConfig
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(self, tokens: Int[Array, "B T"], *, positions: Int[Array, "B T"] | None = None,
                 attention_mask: Int[Array, "B T"] | None = None, segment_ids: Int[Array, "B T"] | None = None,
                 cache: KVCache | None = None,
                 return_hidden: bool = False, compute_logits: bool = True,
                 deterministic: bool = True) -> ModelOutput:
        """Args:
          tokens: token ids ``[B, T]`` (left padding allowed).
          positions: ``[B, T]``; default: counted from ``attention_mask`` (and the cache).
          attention_mask: ``[B, T]``, 1 for real tokens; default all ones (with ``segment_ids``:
            ``segment_ids > 0``).
          segment_ids: ``[B, T]`` packed rows: several examples concatenated in one row, segment
            ``s > 0`` per example, 0 for padding. A token attends only to earlier tokens of its
            own segment (block-diagonal causal mask) and positions restart at 0 in each segment
            (:func:`positions_from_segments`), so a packed row computes exactly what the examples
            would alone. Not with a ``cache``.
          cache: a :class:`KVCache`; the ``T`` new tokens are written at ``cache.index`` and attend
            to every real token before them. ``None``: plain causal forward pass.
          return_hidden: also return the final hidden states ``[B, T, D]``.
          compute_logits: skip the LM head when ``False`` (reward / value models).
          deterministic: ``False`` enables LoRA dropout (needs a ``"dropout"`` rng).
        """
        c = self.config
        dt = c.jnp_dtype
        b, t = tokens.shape
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) are for training passes, not with a KV cache")
        if attention_mask is None:
            attention_mask = (jnp.ones((b, t), jnp.int32) if segment_ids is None
                              else (segment_ids > 0).astype(jnp.int32))
        attention_mask = attention_mask.astype(jnp.int32)
        if cache is None:
            offset = 0
            key_mask = attention_mask
            q_slot = jnp.arange(t)
            k_slot = jnp.arange(t)
            write_index = 0
        else:
            offset = jnp.sum(cache.mask, axis=-1)
            write_index = cache.index
            key_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, write_index))
            q_slot = write_index + jnp.arange(t)
            k_slot = jnp.arange(cache.max_length)
        if positions is None:
            positions = (positions_from_mask(attention_mask, offset) if segment_ids is None
                         else positions_from_segments(segment_ids))
        visible = (k_slot[None, None, :] <= q_slot[None, :, None]) & (key_mask[:, None, :] > 0)
        if segment_ids is not None:
            visible = visible & (segment_ids[:, :, None] == segment_ids[:, None, :])

        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=dt,
                         embedding_init=nn.initializers.normal(0.02), name="embed")
        x = embed(tokens)
        if c.arch == "gpt2":
            x = x + nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=dt, param_dtype=dt,
                             embedding_init=nn.initializers.normal(0.01), name="pos_embed")(positions)

        new_keys, new_values = [], []
        for i in range(c.num_layers):
            kv_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, kv_cache = Block(c, self.lora, i, name=f"layers_{i}")(x, positions, visible, kv_cache,
                                                                    write_index, deterministic)
            if cache is not None:
                new_keys.append(kv_cache[0])
                new_values.append(kv_cache[1])
        hidden = _norm(c, "final_norm")(x)

        logits = None
        if compute_logits:
            if c.tie_word_embeddings:
                logits = _vocab_projection(hidden, embed.embedding, tied=True)
            else:
                kernel = self.param("lm_head", nn.initializers.normal(0.02), (c.hidden_size, c.vocab_size), dt)
                logits = _vocab_projection(hidden, kernel, tied=False)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_keys), tuple(new_values), key_mask, write_index + t)
        return ModelOutput(logits, hidden if return_hidden else None, new_cache)


def _vocab_projection(hidden, weight, *, tied: bool):
    w = weight.astype(hidden.dtype)
    return jnp.einsum("BTD,VD->BTV" if tied else "BTD,DV->BTV", hidden, w, preferred_element_type=jnp.float32)


def lm_logits(config: ModelConfig, params: dict, hidden: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    """float32 next-token logits from final hidden states (``Transformer(...,
    return_hidden=True, compute_logits=False)``): the LM head of ``params`` (the embedding when
    tied). Lets a caller project only the rows and positions it needs."""
    if config.tie_word_embeddings:
        return _vocab_projection(hidden, params["embed"]["embedding"], tied=True)
    return _vocab_projection(hidden, params["lm_head"], tied=False)
