"""The optimizer of every algorithm: AdamW with clipping, warm-up and accumulation, and the
update that is skipped (and counted) when the loss or a gradient is not finite."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.config_checks import at_least, in_range, multiple_of, one_of, positive

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with global-norm gradient clipping, linear warm-up and optional accumulation."""

    learning_rate: float = 1e-4
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many updates."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; ``None``: no clipping."""
    b1: float = 0.9
    """Adam beta1."""
    b2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    grad_accum_steps: int = 1
    """Accumulate gradients over this many calls before one update (``optax.MultiSteps``)."""

    def __post_init__(self):
        positive(self, "learning_rate")
        at_least(self, "warmup_steps", 0, integer=True)
        at_least(self, "weight_decay", 0)
        positive(self, "max_grad_norm", optional=True)
        in_range(self, "b1", 0, 1, high_open=True)
        in_range(self, "b2", 0, 1, high_open=True)
        positive(self, "eps")
        at_least(self, "grad_accum_steps", 1, integer=True)

def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """The optimizer described by ``config``."""
    lr = config.learning_rate
    if config.warmup_steps > 0:
        lr = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    parts = []
    if config.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay))
    opt = optax.chain(*parts)
    if config.grad_accum_steps > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=config.grad_accum_steps)
    return opt


def all_finite(*trees: PyTree) -> jax.Array:
    leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def guarded_update(params: PyTree, opt_state: PyTree, grads: PyTree, loss: jax.Array,
                   optimizer: optax.GradientTransformation) -> tuple[PyTree, PyTree, jax.Array]:
    """One optimizer update that is skipped (params and optimizer state unchanged) when the
    loss or any gradient is not finite. Returns ``(params, opt_state, skipped)`` with
    ``skipped`` an int32 0/1."""
    ok = all_finite(loss, grads)

    def apply(operands):
        p, o, g = operands
        updates, new_opt = optimizer.update(g, o, p)
        return optax.apply_updates(p, updates), new_opt

    # a branch, not a select: the update runs only when it is kept, and no second copy of the
    # parameters and optimizer state is built to choose from (full fine-tuning: 3 model copies)
    new_params, new_opt = jax.lax.cond(ok, apply, lambda operands: operands[:2], (params, opt_state, grads))
    return new_params, new_opt, (~ok).astype(jnp.int32)
