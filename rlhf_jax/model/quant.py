"""A quantised frozen base (QLoRA): int8 or 4-bit NormalFloat kernels, dequantised per block inside
the matmul, with LoRA adapters in float32 on top.

``quantize_base(params, "int8" | "nf4")`` replaces every dense kernel of the blocks
(``layers/{attn,mlp}/*/kernel``, stacked ``[L, Din, Dout]``) by a small pytree that
:class:`rlhf_jax.model.layers.Dense` recognises; embeddings, norms, biases and the LM head keep their
dtype (as bitsandbytes / PEFT QLoRA leave the LM head unquantised).

- **int8**, per output channel (absmax): ``W[i, o] ~ q[i, o] * s[o]`` with ``s[o] = max_i |W[i, o]| /
  127`` and ``q = round(W / s)`` in ``[-127, 127]``. The scale is applied after the matmul,
  ``x W ~ (x q) * s``, so no float kernel is built. 1 byte per weight (+ 4 bytes per column): 2x
  smaller than bfloat16.
- **nf4**, block-wise (Dettmers et al. 2023, "QLoRA", section 3): the matrix, flattened row-major,
  is cut into blocks of 64; each block is divided by its absolute maximum and each value replaced by
  the nearest of the 16 NormalFloat levels (:data:`NF4_LEVELS`), two 4-bit codes per byte; the
  block maxima are kept in float16 (no double quantisation). 4.25 bits per weight: 3.76x smaller
  than bfloat16. Needs ``Din * Dout`` divisible by 64.

The quantised base is frozen: :func:`quantized_matmul` passes gradients to the activations only
(LoRA on top trains as usual), and its backward pass dequantises again instead of keeping a float
kernel, so under the layer scan no float copy of the base is ever stored.
"""

from __future__ import annotations

import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float

from rlhf_jax.model.stacked import _slice

PyTree = Any
KINDS = ("int8", "nf4")
NF4_BLOCK = 64


def _nf4_levels() -> np.ndarray:
    """The 16 NormalFloat4 levels (QLoRA, eq. 4 and its asymmetric variant): quantiles of N(0, 1)
    so that each level covers an equal share of a normal distribution, 8 on the positive side and
    7 on the negative side plus an exact zero, scaled to [-1, 1]. ``offset`` = 1/2 (1/32 + 1/30)
    (the mean of the quantile grid's ends for 2 * 16 and 2 * 15 bins)."""
    offset = 0.5 * (1 - 1 / 32 + 1 - 1 / 30)
    inv = statistics.NormalDist().inv_cdf
    pos = [inv(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-inv(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    levels = np.sort(np.array(pos + [0.0] + neg))
    return (levels / np.max(np.abs(levels))).astype(np.float32)


NF4_LEVELS = _nf4_levels()
"""The 16 levels of NF4, ascending, from -1 to 1 with an exact 0."""


@struct.dataclass
class Int8Kernel:
    """``W ~ q * scale`` (per output column). Leading axes (the layer axis) are allowed."""

    q: jax.Array
    """int8 ``[..., Din, Dout]``."""
    scale: jax.Array
    """float32 ``[..., Dout]``."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        return (self.q.astype(jnp.float32) * self.scale[..., None, :]).astype(dtype)

    def matmul(self, x: Float[Array, "N Din"]) -> Float[Array, "N Dout"]:
        return (x @ self.q.astype(x.dtype)) * self.scale.astype(x.dtype)

    def matmul_t(self, g: Float[Array, "N Dout"]) -> Float[Array, "N Din"]:
        return (g * self.scale.astype(g.dtype)) @ self.q.astype(g.dtype).T


@struct.dataclass
class NF4Kernel:
    """Block-wise 4-bit NormalFloat codes of a ``[Din, Dout]`` matrix (leading axes allowed)."""

    packed: jax.Array
    """uint8 ``[..., Din * Dout / 2]``: element ``2j`` in the high nibble, ``2j + 1`` in the low."""
    absmax: jax.Array
    """float16 ``[..., Din * Dout / 64]``: each block's absolute maximum."""
    matrix: tuple[int, int] = struct.field(pytree_node=False)
    """``(Din, Dout)`` of one matrix."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.packed.shape[:-1]) + tuple(self.matrix)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        lead = self.packed.shape[:-1]
        codes = jnp.stack([self.packed >> 4, self.packed & 15], axis=-1).reshape(*lead, -1)
        values = jnp.asarray(NF4_LEVELS)[codes.astype(jnp.int32)]
        values = values.reshape(*lead, -1, NF4_BLOCK) * self.absmax.astype(jnp.float32)[..., None]
        return values.reshape(*lead, *self.matrix).astype(dtype)

    def matmul(self, x):
        return x @ self.dequantize(x.dtype)

    def matmul_t(self, g):
        return g @ self.dequantize(g.dtype).T


QuantizedKernel = Int8Kernel | NF4Kernel


def is_quantized(x: Any) -> bool:
    return isinstance(x, (Int8Kernel, NF4Kernel))


def _layer_of(kernel: QuantizedKernel, layer) -> QuantizedKernel:
    return jax.tree_util.tree_map(lambda x: _slice(x, layer), kernel)


@jax.custom_vjp
def quantized_matmul(x: Float[Array, "N Din"], kernel: QuantizedKernel, layer=None) -> Float[Array, "N Dout"]:
    """``x W`` with ``W`` the dequantised ``kernel`` (layer ``layer`` of a stacked one; ``None``:
    not stacked), in ``x``'s dtype. The kernel is frozen: its cotangent is zero, and the backward
    pass ``dx = g W^T`` slices and dequantises again (the residual is the quantised stack itself,
    never a float copy)."""
    return _layer_of(kernel, layer).matmul(x)


def _qmm_fwd(x, kernel, layer):
    return _layer_of(kernel, layer).matmul(x), (kernel, layer)


def _qmm_bwd(res, g):
    kernel, layer = res
    return _layer_of(kernel, layer).matmul_t(g), None, None


quantized_matmul.defvjp(_qmm_fwd, _qmm_bwd)


def quantize_int8(w: Float[Array, "... Din Dout"]) -> Int8Kernel:
    """Per-output-column absmax int8 (a zero column gets scale 1 and codes 0)."""
    w32 = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=-2)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w32 / scale[..., None, :]), -127, 127).astype(jnp.int8)
    return Int8Kernel(q=q, scale=scale)


def quantize_nf4(w: Float[Array, "... Din Dout"]) -> NF4Kernel:
    """Block-wise (64) NF4 with float16 block maxima; rounding to the nearest level."""
    *lead, d_in, d_out = w.shape
    if (d_in * d_out) % NF4_BLOCK:
        raise ValueError(f"nf4: a [{d_in}, {d_out}] kernel has {d_in * d_out} values, not a multiple of the "
                         f"block size {NF4_BLOCK}; quantise it with 'int8'")
    blocks = jnp.asarray(w, jnp.float32).reshape(*lead, -1, NF4_BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=-1).astype(jnp.float16)
    denom = absmax.astype(jnp.float32)[..., None]
    normed = blocks / jnp.where(denom > 0, denom, 1.0)
    mids = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    codes = jnp.searchsorted(mids, normed.reshape(*lead, -1)).astype(jnp.uint8)
    pairs = codes.reshape(*lead, -1, 2)
    packed = (pairs[..., 0] << 4) | pairs[..., 1]
    return NF4Kernel(packed=packed, absmax=absmax.reshape(*lead, -1), matrix=(d_in, d_out))


def _is_block_kernel(names: tuple[str, ...]) -> bool:
    return len(names) >= 3 and names[0] == "layers" and names[-1] == "kernel"


def quantize_base(params: PyTree, kind: str) -> PyTree:
    """A copy of the base tree with every block's dense kernel quantised (see the module
    docstring); everything else is kept as is. Pass it as ``{"params": quantised}`` to
    ``model.apply`` (with or without a ``"lora"`` adapter). Quantises one layer at a time, so the
    peak is the tree plus one layer's float32 kernel.

    Args:
      params: a base parameter tree (stacked layers).
      kind: ``"int8"`` or ``"nf4"``.
    """
    if kind not in KINDS:
        raise ValueError(f"quantize_base: kind must be one of {KINDS}, got {kind!r}")
    one = quantize_int8 if kind == "int8" else quantize_nf4

    def visit(tree, names):
        if isinstance(tree, dict) or hasattr(tree, "items"):
            return {k: visit(v, names + (k,)) for k, v in tree.items()}
        if not _is_block_kernel(names) or is_quantized(tree):
            return tree
        per_layer = [one(tree[i]) for i in range(tree.shape[0])]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_layer)

    return visit(params, ())


def dequantize_base(params: PyTree, dtype=jnp.bfloat16) -> PyTree:
    """The base tree with every quantised kernel turned back into a float array of ``dtype``
    (e.g. before :func:`rlhf_jax.export.save_hf_folder`, which refuses quantised kernels). This is
    the quantised model's own function, not the original weights."""
    return jax.tree_util.tree_map(lambda x: x.dequantize(dtype) if is_quantized(x) else x, params,
                                  is_leaf=is_quantized)


def quantized_leaves(params: PyTree) -> list[str]:
    """``/``-joined paths of the quantised kernels in ``params``."""
    out = []

    def visit(tree, names):
        if is_quantized(tree):
            out.append("/".join(names))
        elif isinstance(tree, dict) or hasattr(tree, "items"):
            for k, v in tree.items():
                visit(v, names + (k,))

    visit(params, ())
    return out
