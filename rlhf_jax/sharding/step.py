"""Jitting a trainer's step for a mesh: the one place where the state's shardings meet ``jax.jit``."""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import Mesh

from rlhf_jax.sharding.mesh import replicated
from rlhf_jax.sharding.rules import Rules, param_shardings

PyTree = Any


def jit_step(step: Callable, mesh: Mesh | None, state: PyTree, *, donate_argnums=0,
             rules: Rules | None = None) -> Callable:
    """``jax.jit`` of an unjitted ``step(state, ...) -> (state, metrics)`` (the library's SFT,
    reward and PPO steps) that keeps the state's layout from step to step: the new state gets
    :func:`param_shardings` of ``state`` (an example state, arrays or ``ShapeDtypeStruct``s) and
    the metrics are replicated. The other arguments' shardings are taken from the arrays passed
    (place them with :func:`shard_params` / :func:`shard_batch`). ``mesh=None``: a plain
    ``jax.jit(step, donate_argnums=donate_argnums)``."""
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return jax.jit(step, donate_argnums=donate_argnums,
                   out_shardings=(param_shardings(state, mesh, rules), replicated(mesh)))
