"""KL-coefficient controllers as ``(init, update)`` pairs of pure functions (optax style).

The state is a NamedTuple holding ``beta``, the coefficient of the per-token KL penalty
``r_t = score * [t is last] - beta * KL_t``. Both functions are jit-able; ``update`` returns a new
state and never mutates.

    controller = adaptive_kl_controller(init_beta=0.1, target=6.0, horizon=10_000)
    state = controller.init()
    state = controller.update(state, kl=measured_kl, n_steps=batch_size)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["KLControllerState", "KLController", "fixed_kl_controller", "adaptive_kl_controller"]


class KLControllerState(NamedTuple):
    """State of a KL controller."""

    beta: Float[Array, ""]
    """Current KL coefficient (float32 scalar)."""


class KLController(NamedTuple):
    """An ``(init, update)`` pair; see :func:`fixed_kl_controller`, :func:`adaptive_kl_controller`."""

    init: Callable[[], KLControllerState]
    """``init() -> state``."""
    update: Callable[..., KLControllerState]
    """``update(state, kl, n_steps) -> state``: ``kl`` is the measured KL(pi || pi_ref) per
    sequence (summed over tokens, averaged over the batch), ``n_steps`` the number of samples
    (episodes) since the last update."""


def fixed_kl_controller(beta: float) -> KLController:
    """A constant KL coefficient: ``update`` returns the state unchanged.

    Args:
      beta: the coefficient.

    Returns:
      A :class:`KLController`.
    """

    def init() -> KLControllerState:
        return KLControllerState(beta=jnp.asarray(beta, jnp.float32))

    def update(state: KLControllerState, kl=None, n_steps=None) -> KLControllerState:
        del kl, n_steps
        return state

    return KLController(init=init, update=update)


def adaptive_kl_controller(*, init_beta: float, target: float, horizon: float) -> KLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences", section 2.2), a proportional controller on log(beta):

        e_t      = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_t+1 = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    so beta grows when the measured KL exceeds the target and shrinks when it is below.

    Args:
      init_beta: initial coefficient (Ziegler et al.: 0.1 or 0.05).
      target: target KL per sequence, in nats (e.g. 6.0).
      horizon: number of samples over which the error is corrected (e.g. 10_000).

    Returns:
      A :class:`KLController`; ``update(state, kl, n_steps)``.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError(f"target and horizon must be positive, got {target=}, {horizon=}")

    def init() -> KLControllerState:
        return KLControllerState(beta=jnp.asarray(init_beta, jnp.float32))

    def update(state: KLControllerState, kl, n_steps) -> KLControllerState:
        error = jnp.clip(jnp.asarray(kl, jnp.float32) / target - 1.0, -0.2, 0.2)
        mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / horizon
        return KLControllerState(beta=state.beta * mult)

    return KLController(init=init, update=update)
