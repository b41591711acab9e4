"""Heads on top of the final hidden states: a scalar score (reward) and per-token values (critic).

Both are a linear map ``D -> 1`` kept as their own small pytree ``{"kernel": [D], "bias": []}``
so they can be trained (or frozen) apart from the base. Computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def init_head(key: jax.Array, hidden_size: int, *, std: float | None = None) -> dict:
    """A fresh linear head; ``std=0`` gives an all-zero head (a critic that starts at 0)."""
    std = (1.0 / (hidden_size + 1)) ** 0.5 if std is None else std
    return {"kernel": std * jax.random.normal(key, (hidden_size,), jnp.float32),
            "bias": jnp.zeros((), jnp.float32)}


def last_token_index(attention_mask: Int[Array, "B T"]) -> Int[Array, "B"]:
    """Index of the last real token of each row (works for left and right padding)."""
    t = attention_mask.shape[-1]
    return (t - 1 - jnp.argmax(jnp.flip(attention_mask > 0, axis=-1), axis=-1)).astype(jnp.int32)


def value_head(head: dict, hidden: Float[Array, "B T D"]) -> Float[Array, "B T"]:
    """Per-token value ``v_t = h_t . w + b``."""
    return jnp.einsum("BTD,D->BT", hidden.astype(jnp.float32), head["kernel"]) + head["bias"]


def score_head(head: dict, hidden: Float[Array, "B T D"],
               attention_mask: Int[Array, "B T"]) -> Float[Array, "B"]:
    """Scalar score read at the last real token: ``r = h_last . w + b``."""
    idx = last_token_index(attention_mask)
    h_last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
    return jnp.einsum("BD,D->B", h_last.astype(jnp.float32), head["kernel"]) + head["bias"]
