"""Scaled dot-product attention with grouped-query heads, left padding, causal masks and packed
segments, through ``jax.nn.dot_product_attention`` (XLA, or cuDNN flash attention on a GPU), or a
query-chunked path whose memory does not grow with ``T * S`` in the backward pass.

Which key a query sees is described compactly by :class:`AttentionMask` (slots, a key mask, segment
ids); the dense ``[B, 1, T, S]`` boolean mask is only built where a kernel needs it (per query
block in the chunked path).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class AttentionMask(NamedTuple):
    """Query ``t`` sees key ``s`` when ``k_slot[s] <= q_slot[t]`` (causal), ``key_mask[b, s]``
    (a real token) and, with packed rows, ``q_segment[b, t] == k_segment[b, s]``. A query always
    sees its own slot, so a padding query (whose output is never used) is never fully masked."""

    q_slot: Int[Array, "T"]
    k_slot: Int[Array, "S"]
    key_mask: Bool[Array, "B S"]
    q_segment: Int[Array, "B T"] | None = None
    k_segment: Int[Array, "B S"] | None = None

    def dense(self, start: Int[Array, ""] | int = 0, size: int | None = None) -> Bool[Array, "B 1 T S"]:
        """The boolean mask of queries ``start .. start + size`` (default: all)."""
        q_slot, q_seg = self.q_slot, self.q_segment
        if size is not None:
            q_slot = jax.lax.dynamic_slice_in_dim(q_slot, start, size)
            q_seg = None if q_seg is None else jax.lax.dynamic_slice_in_dim(q_seg, start, size, axis=1)
        causal = self.k_slot[None, :] <= q_slot[:, None]
        visible = causal[None] & self.key_mask[:, None, :]
        if q_seg is not None:
            visible = visible & (q_seg[:, :, None] == self.k_segment[:, None, :])
        visible = visible | (self.k_slot[None, :] == q_slot[:, None])[None]
        return visible[:, None]


def resolve_implementation(name: str, *, dtype, queries: int, chunk: int, square: bool) -> str:
    """The kernel ``"auto"`` stands for: cuDNN on a GPU for 16-bit training passes (``square``:
    no KV cache), else ``"chunked"`` above ``chunk`` queries, else ``"xla"``."""
    if name != "auto":
        return name
    if square and jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "chunked" if queries > chunk else "xla"


def _xla(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def _chunked(q, k, v, mask: AttentionMask, chunk: int):
    b, t, n, h = q.shape
    pad = -t % chunk
    if pad:
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
        extra = mask.q_slot[-1] + 1 + jnp.arange(pad, dtype=mask.q_slot.dtype)
        seg = mask.q_segment
        mask = mask._replace(q_slot=jnp.concatenate([mask.q_slot, extra]),
                             q_segment=None if seg is None else jnp.pad(seg, ((0, 0), (0, pad))))
    blocks = q.reshape(b, -1, chunk, n, h).swapaxes(0, 1)  # [T/C, B, C, N, H]

    @jax.checkpoint
    def one(qc, start):
        return _xla(qc, k, v, mask.dense(start, chunk))

    def body(_, xs):
        qc, i = xs
        return None, one(qc, i * chunk)

    _, out = jax.lax.scan(body, None, (blocks, jnp.arange(blocks.shape[0])))
    return out.swapaxes(0, 1).reshape(b, -1, n, h)[:, :t]


def attend(q: Float[Array, "B T N H"], k: Float[Array, "B S K H"], v: Float[Array, "B S K H"],
           mask: AttentionMask, *, implementation: str = "auto", chunk: int = 512) -> Float[Array, "B T N H"]:
    """Grouped-query scaled dot-product attention, softmax in float32 (``N`` a multiple of ``K``).

    Args:
      q, k, v: queries ``[B, T, N, H]``, keys and values ``[B, S, K, H]`` (same dtype).
      mask: which keys each query sees (:class:`AttentionMask`).
      implementation: ``"xla"``, ``"cudnn"``, ``"chunked"`` or ``"auto"`` (see
        :func:`resolve_implementation`).
      chunk: query block of the chunked path.
    Returns:
      ``[B, T, N, H]`` in ``q``'s dtype.
    """
    t, s = q.shape[1], k.shape[1]
    square = t == s and mask.q_slot.shape == mask.k_slot.shape
    impl = resolve_implementation(implementation, dtype=q.dtype, queries=t, chunk=chunk, square=square)
    if impl == "xla":
        return _xla(q, k, v, mask.dense())
    if impl == "chunked":
        return _xla(q, k, v, mask.dense()) if t <= chunk else _chunked(q, k, v, mask, chunk)
    if impl == "cudnn":
        # is_causal lets cuDNN skip the blocks above the diagonal; padding and segments enter as a
        # [B, 1, T, S] mask (cuDNN adds it as a bias). Slots equal positions 0..T-1 without a cache.
        return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(), is_causal=square, implementation="cudnn")
    raise ValueError(f"unknown attention implementation {impl!r} (auto, xla, cudnn, chunked)")
