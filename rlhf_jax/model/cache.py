"""The KV cache: an explicit pytree passed to and returned by ``model.apply``."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rlhf_jax.model.config import ModelConfig


class KVCache(NamedTuple):
    """Keys and values of every layer in preallocated buffers of ``S`` slots, one ``[B, K, S, H]``
    array per layer (a separate buffer per layer and the slot axis next to the head dim let a
    decode step read each layer's cache in place, with no slice or transpose copy).

    Slots are filled left to right; ``mask`` marks the slots that hold real tokens (left padding
    of a prompt leaves masked slots), ``index`` is the number of slots written so far.
    """

    keys: tuple[Float[Array, "B K S H"], ...]
    """One buffer per layer."""
    values: tuple[Float[Array, "B K S H"], ...]
    mask: Int[Array, "B S"]
    index: Int[Array, ""]

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]


def init_cache(config: ModelConfig, batch_size: int, max_length: int, *, dtype=None) -> KVCache:
    """An empty cache for ``batch_size`` rows of up to ``max_length`` tokens."""
    shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
    dt = config.jnp_dtype if dtype is None else dtype
    layers = range(config.num_layers)
    return KVCache(tuple(jnp.zeros(shape, dt) for _ in layers), tuple(jnp.zeros(shape, dt) for _ in layers),
                   jnp.zeros((batch_size, max_length), jnp.int32), jnp.zeros((), jnp.int32))
