"""The decoder-only transformer (Llama family incl. Qwen2, and GPT-2) as a Flax linen module.

``model.apply({"params": base, "lora": lora}, tokens, attention_mask=..., cache=...)`` is a pure
function of explicit pytrees. Leave ``"lora"`` out to get the base model. Batches may be
left-padded: positions come from the attention mask, padded slots are never attended to.

Parameter layout: the blocks' parameters are stacked on a leading layer axis under ``layers``
(``params["layers"]["attn"]["q_proj"]["kernel"]`` is ``[L, Din, Dout]``; LoRA's ``a``/``b`` are
``[L, Din, R]``/``[L, R, Dout]``) and run by one ``nn.scan`` (optionally rematerialised per block);
the embedding, final norm and LM head are not stacked. Hugging Face import/export, PEFT adapters
and sharding rules stack and unstack at the edges.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from rlhf_jax.lora import LAYERS, LoraConfig
from rlhf_jax.model.attention import AttentionMask, attend
from rlhf_jax.model.cache import KVCache
from rlhf_jax.model.config import ModelConfig
from rlhf_jax.model.layers import Dense, LayerNorm, RMSNorm, activation, apply_rope, rope_frequencies
from rlhf_jax.model.stacked import _slice


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


class Attention(nn.Module):
    config: ModelConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, layer, positions, mask: AttentionMask, kv, write_index):
        """``kv``: ``None`` or the whole stacked cache ``(keys, values)`` ``[L, B, S, K, H]``; this
        layer's new keys/values are written in place at ``(layer, :, write_index)`` and the updated
        buffers returned."""
        c = self.config
        dt = c.compute_jnp_dtype
        b, t, _ = x.shape
        n, kvh, h = c.num_heads, c.num_kv_heads, c.head_dim
        det = self.deterministic

        def dense(f, bias, name):
            return Dense(f, use_bias=bias, dtype=dt, param_dtype=c.jnp_dtype, lora=self.lora,
                         num_layers=c.num_layers, name=name)

        if c.arch == "gpt2":
            qkv = dense(3 * n * h, True, "c_attn")(x, layer, det)
            q, k, v = jnp.split(qkv, 3, axis=-1)
        else:
            q = dense(n * h, c.qkv_bias, "q_proj")(x, layer, det)
            k = dense(kvh * h, c.qkv_bias, "k_proj")(x, layer, det)
            v = dense(kvh * h, c.qkv_bias, "v_proj")(x, layer, det)
        q, k, v = q.reshape(b, t, n, h), k.reshape(b, t, kvh, h), v.reshape(b, t, kvh, h)
        if c.arch == "llama":
            inv_freq = rope_frequencies(c)
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if kv is not None and kv[0].ndim == 4:  # this layer's own buffers [B, S, K, H] (scan_cache="layers")
            keys, values = kv
            at = (0, write_index, 0, 0)
            keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), at)
            values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), at)
            kv = (keys, values)
            k, v = keys.astype(dt), values.astype(dt)
        elif kv is not None:
            keys, values = kv
            at = (layer, 0, write_index, 0, 0)
            keys = jax.lax.dynamic_update_slice(keys, k[None].astype(keys.dtype), at)
            values = jax.lax.dynamic_update_slice(values, v[None].astype(values.dtype), at)
            kv = (keys, values)
            k, v = _slice(keys, layer).astype(dt), _slice(values, layer).astype(dt)
        out = attend(q, k, v, mask, implementation=c.attention, chunk=c.attention_chunk).reshape(b, t, n * h)
        if c.arch == "gpt2":
            out = dense(c.hidden_size, True, "c_proj")(out, layer, det)
        else:
            out = dense(c.hidden_size, c.o_bias, "o_proj")(out, layer, det)
        return out, kv


class MLP(nn.Module):
    config: ModelConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, layer):
        c = self.config
        act = activation(c.activation)
        det = self.deterministic

        def dense(f, bias, name):
            return Dense(f, use_bias=bias, dtype=c.compute_jnp_dtype, param_dtype=c.jnp_dtype, lora=self.lora,
                         num_layers=c.num_layers, name=name)

        if c.arch == "gpt2":
            hdn = act(dense(c.intermediate_size, True, "c_fc")(x, layer, det))
            return dense(c.hidden_size, True, "c_proj")(hdn, layer, det)
        gate = dense(c.intermediate_size, c.mlp_bias, "gate_proj")(x, layer, det)
        up = dense(c.intermediate_size, c.mlp_bias, "up_proj")(x, layer, det)
        return dense(c.hidden_size, c.mlp_bias, "down_proj")(act(gate) * up, layer, det)


def _norm(config: ModelConfig, name: str, stacked: bool = True):
    cls = LayerNorm if config.arch == "gpt2" else RMSNorm
    return cls(eps=config.norm_eps, dtype=config.compute_jnp_dtype, param_dtype=config.jnp_dtype,
               num_layers=config.num_layers if stacked else None, name=name)


class Block(nn.Module):
    """One transformer block; run under ``nn.scan`` over the stacked layers. ``cache_in_carry``:
    ``carry = (x, kv)`` with the whole stacked cache, ``xs`` the layer index; otherwise ``carry =
    x``, ``xs = (layer, this layer's kv)`` and the updated kv is the scan's output. The rest is
    broadcast."""

    config: ModelConfig
    lora: LoraConfig | None = None
    deterministic: bool = True
    cache_in_carry: bool = True

    @nn.compact
    def __call__(self, carry, xs, positions, mask, write_index):
        if self.cache_in_carry:
            (x, kv), layer = carry, xs
        else:
            x, (layer, kv) = carry, xs
        attn_out, kv = Attention(self.config, self.lora, self.deterministic, name="attn")(
            _norm(self.config, "attn_norm")(x, layer), layer, positions, mask, kv, write_index)
        x = x + attn_out
        x = x + MLP(self.config, self.lora, self.deterministic, name="mlp")(_norm(self.config, "mlp_norm")(x, layer),
                                                                          layer)
        return ((x, kv), None) if self.cache_in_carry else (x, kv)


def _layer_stack(config: ModelConfig, lora: LoraConfig | None, deterministic: bool, cache_in_carry: bool = True):
    """The blocks as one module named ``layers`` (see :data:`rlhf_jax.lora.LAYERS`): ``nn.scan`` over
    the layer index, with the parameters and adapters stacked on a leading layer axis and passed to
    every step whole (each layer slices its own rows, :mod:`rlhf_jax.model.stacked`); each block
    under ``nn.remat`` when ``config.remat`` asks; ``scan_layers=False`` unrolls the same scan."""
    block = Block
    policy = config.remat_policy
    if policy is not None:
        block = nn.remat(Block, policy=policy, prevent_cse=not config.scan_layers)
    scanned = nn.scan(block, variable_broadcast=["params", "lora"], split_rngs={"params": False, "dropout": True},
                      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=config.num_layers,
                      unroll=1 if config.scan_layers else True)
    return scanned(config, lora, deterministic, cache_in_carry, name=LAYERS)


class Transformer(nn.Module):
    """Decoder-only language model; see the module docstring for the calling convention."""

    config: ModelConfig
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(self, tokens: Int[Array, "B T"], *, positions: Int[Array, "B T"] | None = None,
                 attention_mask: Int[Array, "B T"] | None = None, segment_ids: Int[Array, "B T"] | None = None,
                 cache: KVCache | None = None, scan_cache: str = "carry",
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
          scan_cache: how the layer scan passes the cache: ``"carry"`` (the whole stacked buffer
            carried and written in place: decoding) or ``"layers"`` (each layer's slice scanned
            in and out: under a gradient the scan then keeps one layer's cache per layer instead
            of the whole buffer per layer, so memory stays linear in depth; the shared-prompt
            training passes of :mod:`rlhf_jax.rollout.shared_prefix`). Same values.
          return_hidden: also return the final hidden states ``[B, T, D]``.
          compute_logits: skip the LM head when ``False`` (reward / value models, or a loss that
            projects the hidden states in chunks: :mod:`rlhf_jax.losses.chunked`).
          deterministic: ``False`` enables LoRA dropout (needs a ``"dropout"`` rng).
        """
        c = self.config
        dt = c.compute_jnp_dtype
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
            write_index = jnp.zeros((), jnp.int32)
            kv = None
        else:
            offset = jnp.sum(cache.mask, axis=-1)
            write_index = cache.index
            key_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, write_index))
            q_slot = write_index + jnp.arange(t)
            k_slot = jnp.arange(cache.max_length)
            kv = (cache.keys, cache.values)
        if positions is None:
            positions = (positions_from_mask(attention_mask, offset) if segment_ids is None
                         else positions_from_segments(segment_ids))
        mask = AttentionMask(q_slot, k_slot, key_mask > 0, segment_ids, segment_ids)

        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=c.jnp_dtype,
                         embedding_init=nn.initializers.normal(0.02), name="embed")
        x = embed(tokens)
        if c.arch == "gpt2":
            x = x + nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=dt, param_dtype=c.jnp_dtype,
                             embedding_init=nn.initializers.normal(0.01), name="pos_embed")(positions)

        if scan_cache not in ("carry", "layers"):
            raise ValueError(f"scan_cache must be 'carry' or 'layers', got {scan_cache!r}")
        layers = jnp.arange(c.num_layers)
        if kv is None or scan_cache == "carry":
            (x, kv), _ = _layer_stack(c, self.lora, deterministic)((x, kv), layers, positions, mask, write_index)
        else:
            x, kv = _layer_stack(c, self.lora, deterministic, cache_in_carry=False)(x, (layers, kv), positions, mask,
                                                                                   write_index)
        hidden = _norm(c, "final_norm", stacked=False)(x)

        logits = None
        if compute_logits:
            if c.tie_word_embeddings:
                logits = _vocab_projection(hidden, embed.embedding, tied=True)
            else:
                kernel = self.param("lm_head", nn.initializers.normal(0.02), (c.hidden_size, c.vocab_size),
                                    c.jnp_dtype)
                logits = _vocab_projection(hidden, kernel, tied=False)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(kv[0], kv[1], key_mask, write_index + t)
        return ModelOutput(logits, hidden if return_hidden else None, new_cache)


def _vocab_projection(hidden, weight, *, tied: bool):
    w = weight.astype(hidden.dtype)
    return jnp.einsum("BTD,VD->BTV" if tied else "BTD,DV->BTV", hidden, w, preferred_element_type=jnp.float32)


def head_weight(config: ModelConfig, params: dict) -> tuple[jax.Array, bool]:
    """``(weight, tied)``: the LM head of ``params``: the embedding ``[V, D]`` when the config ties
    them (``tied=True``), else ``lm_head [D, V]``. For the chunked losses,
    ``chunked_token_logprobs(hidden, *head_weight(config, params), targets)``."""
    if config.tie_word_embeddings:
        return params["embed"]["embedding"], True
    return params["lm_head"], False


def lm_logits(config: ModelConfig, params: dict, hidden: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    """float32 next-token logits from final hidden states (``Transformer(...,
    return_hidden=True, compute_logits=False)``): the LM head of ``params`` (the embedding when
    tied). Lets a caller project only the rows and positions it needs."""
    weight, tied = head_weight(config, params)
    return _vocab_projection(hidden, weight, tied=tied)
