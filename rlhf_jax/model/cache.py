"""The KV cache: an explicit pytree passed to and returned by ``model.apply``."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rlhf_jax.model.config import ModelConfig


class KVCache(NamedTuple):
    """Keys and values of every layer in preallocated buffers of ``S`` slots, stacked on a
    leading layer axis like the parameters: ``[L, B, S, K, H]`` (the key/value layout of
    ``jax.nn.dot_product_attention``). The layer scan carries the whole buffer and each block
    writes its new slots in place (``dynamic_update_slice``).

    Slots are filled left to right; ``mask`` marks the slots that hold real tokens (left padding
    of a prompt leaves masked slots), ``index`` is the number of slots written so far.
    """

    keys: Float[Array, "L B S K H"]
    values: Float[Array, "L B S K H"]
    mask: Int[Array, "B S"]
    index: Int[Array, ""]

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]


def init_cache(config: ModelConfig, batch_size: int, max_length: int, *, dtype=None) -> KVCache:
    """An empty cache for ``batch_size`` rows of up to ``max_length`` tokens, in the compute dtype
    (or ``dtype``)."""
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    dt = config.compute_jnp_dtype if dtype is None else dtype
    return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.zeros((batch_size, max_length), jnp.int32),
                   jnp.zeros((), jnp.int32))
