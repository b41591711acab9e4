"""Building blocks: a dense layer with an optional LoRA adapter, norms, rotary embeddings."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from rlhf_jax.lora import LoraConfig
from rlhf_jax.model.config import ModelConfig
from rlhf_jax.model.quant import is_quantized, quantized_matmul
from rlhf_jax.model.stacked import layer_matmul, lora_matmul, merged_lora_matmul, take_layer

__all__ = ["Dense", "LayerNorm", "RMSNorm", "activation", "apply_rope", "lora_matmul", "rope_frequencies"]


def flat_normal(std: float):
    """``nn.initializers.normal(std)`` drawn flat and reshaped (the same law; XLA:CPU compiles the
    random-bits kernel of a 1-D shape several times faster than that of a 3-D stack)."""
    init = nn.initializers.normal(std)
    return lambda key, shape, dtype=jnp.float32: init(key, (int(np.prod(shape)),), dtype).reshape(shape)


class Dense(nn.Module):
    """``y = x W (+ b)`` with kernel ``[Din, Dout]``, or, with ``num_layers``, a kernel stacked
    ``[L, Din, Dout]`` of which the call's ``layer`` is used (sliced inside the matmul, see
    :mod:`rlhf_jax.model.stacked`). When ``lora`` selects the layer and the ``"lora"`` collection is
    present, adds ``(alpha/R) * dropout(x) A B``. A quantised kernel (:mod:`rlhf_jax.model.quant`) is
    dequantised inside the matmul."""

    features: int
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    """Compute dtype (activations, the kernel as used)."""
    param_dtype: jnp.dtype = jnp.float32
    """dtype of the parameters ``init`` creates."""
    lora: LoraConfig | None = None
    num_layers: int | None = None
    """Length of the stacked layer axis; ``None``: an unstacked kernel."""
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: Float[Array, "... Din"], layer: Int[Array, ""] | None = None,
                 deterministic: bool = True) -> Float[Array, "... Dout"]:
        d_in = x.shape[-1]
        lead = x.shape[:-1]
        # One 2-D GEMM over all rows: on XLA:CPU the backward of a [B, T, D] einsum materialises
        # transposed copies of the activation gradients (measured 1.5-2x slower steps).
        x = x.reshape(-1, d_in).astype(self.dtype)
        stacked = () if self.num_layers is None else (self.num_layers,)
        layer = None if self.num_layers is None else layer
        stored = self.get_variable("params", "kernel") if self.has_variable("params", "kernel") else None
        if not is_quantized(stored):
            stored = self.param("kernel", flat_normal(self.init_std), stacked + (d_in, self.features),
                                self.param_dtype)
        path = "/".join(self.scope.path)
        selected = () if self.lora is None else self.lora.layer_selection(path, self.num_layers or 1)
        if any(selected) and (self.is_initializing() or self.has_variable("lora", "a")):
            y = self._adapted(x, stored, layer, stacked, path, selected, deterministic)
        else:
            y = self._base(x, stored, layer)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, stacked + (self.features,), self.param_dtype)
            y = y + take_layer(bias, layer).astype(self.dtype)
        return y.reshape(*lead, self.features)

    def _base(self, x, stored, layer):
        if is_quantized(stored):
            return quantized_matmul(x, stored, layer)
        if layer is None:
            return x @ stored.astype(self.dtype)
        return layer_matmul(x, stored, layer, self.dtype)

    def _adapted(self, x, stored, layer, stacked, path, selected, deterministic):
        cfg, d_in = self.lora, x.shape[-1]
        keep = None if all(selected) else jnp.asarray(selected, jnp.float32)

        def init_a():
            a = cfg.init_a(self.make_rng("params"), stacked + (d_in, cfg.rank))
            return a if keep is None else a * keep[:, None, None]

        a = self.variable("lora", "a", init_a).value
        b = self.variable("lora", "b", lambda: jnp.zeros(stacked + (cfg.rank, self.features), jnp.float32)).value
        a, b = take_layer(a, layer), take_layer(b, layer)
        if keep is not None:  # a layer the targets do not select keeps no update and gets no gradient
            a = a * keep[layer]
        dropout = cfg.dropout > 0.0 and not deterministic
        if a.ndim == 3:  # stacked adapters (lora.stack_adapters): row group g uses a[g], b[g]
            if x.shape[0] % a.shape[0]:
                raise ValueError(f"{path}: {x.shape[0]} rows do not split into {a.shape[0]} adapter groups")
            h = nn.Dropout(cfg.dropout)(x, deterministic=not dropout) if dropout else x
            hg = h.astype(jnp.float32).reshape(a.shape[0], -1, d_in)
            delta = jnp.einsum("gnr,gro->gno", jnp.einsum("gni,gir->gnr", hg, a) * cfg.scale, b)
            return self._base(x, stored, layer) + delta.reshape(-1, self.features).astype(x.dtype)
        if (not dropout and not is_quantized(stored) and stored.dtype == jnp.float32 and self.dtype == jnp.float32
                and x.shape[0] * (d_in + self.features) > d_in * self.features):
            # many rows, float32 kernel: one GEMM over the merged kernel (see merged_lora_matmul)
            return merged_lora_matmul(x, stored, layer, a, b * cfg.scale)
        h = nn.Dropout(cfg.dropout)(x, deterministic=False) if dropout else x
        # [N, R] first: never the [Din, Dout] product; the scale on the small [N, R] side
        delta = ((h.astype(jnp.float32) @ a) * cfg.scale) @ b
        return self._base(x, stored, layer) + delta.astype(x.dtype)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` with statistics in float32 (Zhang & Sennrich 2019)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    num_layers: int | None = None
    """Length of the stacked layer axis of the scale; ``None``: unstacked."""

    @nn.compact
    def __call__(self, x, layer=None):
        stacked = () if self.num_layers is None else (self.num_layers,)
        scale = take_layer(self.param("scale", nn.initializers.ones, stacked + (x.shape[-1],), self.param_dtype),
                           None if self.num_layers is None else layer)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * scale.astype(self.dtype)


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias``, statistics in float32."""

    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    num_layers: int | None = None
    """Length of the stacked layer axis of the scale and bias; ``None``: unstacked."""

    @nn.compact
    def __call__(self, x, layer=None):
        d = x.shape[-1]
        stacked = () if self.num_layers is None else (self.num_layers,)
        layer = None if self.num_layers is None else layer
        scale = take_layer(self.param("scale", nn.initializers.ones, stacked + (d,), self.param_dtype), layer)
        bias = take_layer(self.param("bias", nn.initializers.zeros, stacked + (d,), self.param_dtype), layer)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def activation(name: str):
    if name == "silu":
        return jax.nn.silu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unsupported activation {name!r} (silu, gelu, gelu_new, gelu_pytorch_tanh, relu)")


def rope_frequencies(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies ``theta^(-2i/H)`` [H/2], with Llama-3 scaling when configured."""
    h = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    sc = config.rope_scaling
    if sc is None:
        return inv.astype(np.float32)
    low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
    high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
    smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
        sc.high_freq_factor - sc.low_freq_factor)
    smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Float[Array, "B T N H"], positions: Int[Array, "B T"],
               inv_freq: np.ndarray) -> Float[Array, "B T N H"]:
    """Rotary position embedding, half-split ("rotate_half") layout as in Hugging Face Llama."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # B T H/2
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
