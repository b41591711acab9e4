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


@jax.custom_vjp
def lora_matmul(x: Float[Array, "N Din"], w: Float[Array, "Din Dout"], a: Float[Array, "Din R"],
                b: Float[Array, "R Dout"]) -> Float[Array, "N Dout"]:
    """``x W + (x A) B`` (``B`` already scaled) as ONE GEMM over the merged kernel ``W + A B``,
    forward and backward: the input gradient is ``g (W + A B)^T``, the adapter gradients are
    ``dA = x^T (g B^T)`` and ``dB = (x A)^T g``; the merged kernel is rebuilt in the backward pass
    (no weight-sized residual) and the frozen kernel's own gradient ``x^T g`` is dead code under
    jit unless asked for. Pays ``Din * Dout * R`` FLOPs per call to skip four skinny ``[N, R]``
    GEMM passes over the activations: worth it when ``N`` is large (training, scoring), not for
    one decode token (:class:`Dense` decides)."""
    return x @ (w + a @ b)


def _lora_matmul_fwd(x, w, a, b):
    return x @ (w + a @ b), (x, w, a, b)


def _lora_matmul_bwd(res, g):
    x, w, a, b = res
    gt = g @ b.T
    return g @ (w + a @ b).T, x.T @ g, x.T @ gt, (x @ a).T @ g


lora_matmul.defvjp(_lora_matmul_fwd, _lora_matmul_bwd)


class Dense(nn.Module):
    """``y = x W (+ b)`` with kernel ``[Din, Dout]`` (inside the layer scan: one layer's slice of the
    stacked ``[L, Din, Dout]``); when ``lora`` selects this layer and the ``"lora"`` collection is
    present, adds ``(alpha/R) * dropout(x) A B``. A quantised kernel (:mod:`rlhf_jax.model.quant`)
    is dequantised inside the matmul."""

    features: int
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    """Compute dtype (activations, the kernel as used)."""
    param_dtype: jnp.dtype = jnp.float32
    """dtype of the parameters ``init`` creates."""
    lora: LoraConfig | None = None
    num_layers: int = 1
    """Length of the stacked layer axis (for LoRA's per-layer targets)."""
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: Float[Array, "... Din"], layer: Int[Array, ""] | int = 0,
                 deterministic: bool = True) -> Float[Array, "... Dout"]:
        d_in = x.shape[-1]
        lead = x.shape[:-1]
        # One 2-D GEMM over all rows: on XLA:CPU the backward of a [B, T, D] einsum materialises
        # transposed copies of the activation gradients (measured 1.5-2x slower steps).
        x = x.reshape(-1, d_in).astype(self.dtype)
        stored = self.get_variable("params", "kernel") if self.has_variable("params", "kernel") else None
        if is_quantized(stored):
            kernel = None
        else:
            kernel = self.param("kernel", nn.initializers.normal(self.init_std), (d_in, self.features),
                                self.param_dtype).astype(self.dtype)
        path = "/".join(self.scope.path)
        selected = () if self.lora is None else self.lora.layer_selection(path, self.num_layers)
        if any(selected) and (self.is_initializing() or self.has_variable("lora", "a")):
            y = self._adapted(x, kernel, stored, path, selected, layer, deterministic)
        else:
            y = x @ kernel if kernel is not None else quantized_matmul(x, stored)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y.reshape(*lead, self.features)

    def _adapted(self, x, kernel, stored, path, selected, layer, deterministic):
        cfg, d_in = self.lora, x.shape[-1]
        keep = None if all(selected) else jnp.asarray(selected, jnp.float32)[layer]
        a = self.variable("lora", "a", lambda: cfg.init_a(self.make_rng("params"), (d_in, cfg.rank))
                          * (1.0 if keep is None else keep)).value
        b = self.variable("lora", "b", lambda: jnp.zeros((cfg.rank, self.features), jnp.float32)).value
        if keep is not None:  # a layer the targets do not select keeps no update and gets no gradient
            a = a * keep
        base = (lambda: x @ kernel) if kernel is not None else (lambda: quantized_matmul(x, stored))
        dropout = cfg.dropout > 0.0 and not deterministic
        if a.ndim == 3:  # stacked adapters (lora.stack_adapters): row group g uses a[g], b[g]
            if x.shape[0] % a.shape[0]:
                raise ValueError(f"{path}: {x.shape[0]} rows do not split into {a.shape[0]} adapter groups")
            h = nn.Dropout(cfg.dropout)(x, deterministic=not dropout) if dropout else x
            hg = h.astype(jnp.float32).reshape(a.shape[0], -1, d_in)
            delta = jnp.einsum("gnr,gro->gno", jnp.einsum("gni,gir->gnr", hg, a) * cfg.scale, b)
            return base() + delta.reshape(-1, self.features).astype(x.dtype)
        if (not dropout and kernel is not None and kernel.dtype == jnp.float32
                and x.shape[0] * (d_in + self.features) > d_in * self.features):
            # many rows, float32 kernel: one GEMM over the merged kernel (see lora_matmul)
            return lora_matmul(x, kernel, a, b * cfg.scale)
        h = nn.Dropout(cfg.dropout)(x, deterministic=False) if dropout else x
        # [N, R] first: never the [Din, Dout] product; the scale on the small [N, R] side
        delta = ((h.astype(jnp.float32) @ a) * cfg.scale) @ b
        return base() + delta.astype(x.dtype)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` with statistics in float32 (Zhang & Sennrich 2019)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * scale.astype(self.dtype)


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias``, statistics in float32."""

    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
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
