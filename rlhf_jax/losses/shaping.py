"""Per-token RLHF rewards: the KL penalty on every token plus the sequence score on the last one."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from rlhf_jax.losses.masked import as_float

__all__ = ["kl_shaped_rewards", "last_token_onehot"]


def last_token_onehot(mask: Shaped[Array, "B T"]) -> Float[Array, "B T"]:
    """1.0 at the last position of each row where ``mask`` is non-zero, 0 elsewhere (an empty row
    gets no 1)."""
    keep = jnp.asarray(mask) != 0
    t = keep.shape[-1]
    last = t - 1 - jnp.argmax(jnp.flip(keep, axis=-1), axis=-1)
    return (jax.nn.one_hot(last, t, dtype=jnp.float32) * jnp.any(keep, axis=-1, keepdims=True))


def kl_shaped_rewards(
    kl: Float[Array, "B T"],
    scores: Float[Array, "B"],
    mask: Shaped[Array, "B T"],
    *,
    beta: float | Float[Array, ""],
) -> Float[Array, "B T"]:
    """The per-token reward of RLHF's PPO (Ziegler et al. 2019; Ouyang et al. 2022):

        r_t = -beta * KL_t + [t = last real token] * score

    where ``KL_t`` is a per-token estimate of ``KL(pi || pi_ref)`` (e.g. :func:`kl_penalty`'s k1,
    ``log pi(y_t) - log pi_ref(y_t)``) and ``score`` the reward model's score of the whole
    completion. Masked positions get 0 whatever ``kl`` holds there.

    Args:
      kl: ``[B, T]`` per-token KL estimates over the response.
      scores: ``[B]`` sequence scores.
      mask: ``[B, T]`` response mask (1 up to and including the last generated token).
      beta: KL coefficient (a float or a traced scalar, e.g. an adaptive controller's state).

    Returns:
      ``[B, T]`` float32 rewards (0 at masked positions).
    """
    chex.assert_rank([kl, mask, scores], [2, 2, 1])
    chex.assert_equal_shape([kl, mask])
    chex.assert_equal_shape_prefix([kl, scores], 1)
    keep = jnp.asarray(mask) != 0
    kl = jnp.where(keep, as_float(kl), 0.0)
    return -beta * kl + last_token_onehot(mask) * as_float(scores)[:, None]
