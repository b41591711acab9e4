"""One layer's slice of a parameter stacked on a leading layer axis, and matmuls that slice inside.

The blocks' parameters live stacked ``[L, ...]`` and enter the layer scan whole (broadcast); each
block takes its own layer here. Three things are arranged so that no copy of a whole stack is ever
made, in the forward or the backward pass, whatever the backend:

- the slice is taken behind an ``optimization_barrier`` on ``(stack, layer)``, so XLA cannot hoist
  a conversion of the whole stack out of the loop (XLA:CPU computes every bfloat16 op in float32:
  without the barrier, a float32 copy of every stacked kernel is built before the loop);
- on CPU a 16-bit float stack is sliced as ``uint16`` bits (a data-movement op XLA:CPU does not
  convert), then viewed as floats again;
- the matmuls are ``custom_vjp``s whose residual is the stack itself (a loop constant) and the
  layer index, never the per-layer slice (which ``lax.scan`` would stack into a copy of the
  weights when nothing is rematerialised). The gradient of a stack is the per-layer gradient
  written into its row (``dynamic_update_slice``), accumulated over the layers by the scan.

``layer=None`` means "not stacked": the array is used as is.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _slice(stack: Array, layer) -> Array:
    if layer is None:
        return stack
    stack, layer = jax.lax.optimization_barrier((stack, layer))
    if (jnp.issubdtype(stack.dtype, jnp.floating) and stack.dtype.itemsize == 2
            and jax.default_backend() == "cpu"):
        bits = jax.lax.bitcast_convert_type(stack, jnp.uint16)
        return jax.lax.bitcast_convert_type(jax.lax.dynamic_index_in_dim(bits, layer, keepdims=False), stack.dtype)
    return jax.lax.dynamic_index_in_dim(stack, layer, keepdims=False)


def _into_row(stack: Array, row: Array, layer) -> Array:
    """``row`` written into a zero stack at ``layer`` (the cotangent of :func:`take_layer`)."""
    if layer is None:
        return row.astype(stack.dtype)
    return jax.lax.dynamic_update_index_in_dim(jnp.zeros_like(stack), row.astype(stack.dtype), layer, 0)


def take_layer(stack: Array, layer: Int[Array, ""] | None) -> Array:
    """``stack[layer]`` (see the module docstring); differentiable in ``stack``."""
    return stack if layer is None else _take_layer(stack, layer)


@jax.custom_vjp
def _take_layer(stack, layer):
    return _slice(stack, layer)


def _take_fwd(stack, layer):
    return _slice(stack, layer), (stack, layer)


def _take_bwd(res, g):
    stack, layer = res
    return _into_row(stack, g, layer), None


_take_layer.defvjp(_take_fwd, _take_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_matmul(x: Float[Array, "N Din"], stack: Array, layer, dtype) -> Float[Array, "N Dout"]:
    """``x @ stack[layer]`` with the kernel cast to ``dtype`` (the compute dtype); the backward
    pass slices again: ``dx = g W^T``, ``dW = x^T g`` into the stack's row."""
    return x @ _slice(stack, layer).astype(dtype)


def _mm_fwd(x, stack, layer, dtype):
    return x @ _slice(stack, layer).astype(dtype), (x, stack, layer)


def _mm_bwd(dtype, res, g):
    x, stack, layer = res
    w = _slice(stack, layer).astype(dtype)
    return g @ w.T, _into_row(stack, x.T @ g, layer), None


layer_matmul.defvjp(_mm_fwd, _mm_bwd)


@jax.custom_vjp
def merged_lora_matmul(x: Float[Array, "N Din"], stack: Array, layer, a: Float[Array, "Din R"],
                       b: Float[Array, "R Dout"]) -> Float[Array, "N Dout"]:
    """``x W + (x A) B`` (``B`` already scaled, float32) as ONE GEMM over the merged kernel
    ``W + A B`` with ``W = stack[layer]``, forward and backward: ``dx = g (W + A B)^T``,
    ``dA = x^T (g B^T)``, ``dB = (x A)^T g`` and ``dW = x^T g`` (dead code under jit unless the
    kernel is differentiated); the merged kernel is rebuilt in the backward pass. Pays
    ``Din Dout R`` FLOPs per call to skip four skinny ``[N, R]`` GEMM passes over the activations:
    worth it when ``N`` is large (training, scoring), not for one decode token (:class:`Dense`
    decides)."""
    return x @ (_slice(stack, layer) + a @ b)


def _lmm_fwd(x, stack, layer, a, b):
    return x @ (_slice(stack, layer) + a @ b), (x, stack, layer, a, b)


def _lmm_bwd(res, g):
    x, stack, layer, a, b = res
    w = _slice(stack, layer)
    return g @ (w + a @ b).T, _into_row(stack, x.T @ g, layer), None, x.T @ (g @ b.T), (x @ a).T @ g


merged_lora_matmul.defvjp(_lmm_fwd, _lmm_bwd)


def lora_matmul(x: Float[Array, "N Din"], w: Float[Array, "Din Dout"], a: Float[Array, "Din R"],
                b: Float[Array, "R Dout"]) -> Float[Array, "N Dout"]:
    """:func:`merged_lora_matmul` of an unstacked kernel ``w``."""
    return merged_lora_matmul(x, w, None, a, b)
