"""Training state and the guarded optimizer update shared by every trainer."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(NamedTuple):
    """What a trainer carries from step to step (and what a checkpoint holds)."""

    step: jax.Array
    """int32 scalar: updates attempted so far."""
    params: PyTree
    """The trainable tree only (an adapter, a head, or full weights)."""
    opt_state: PyTree
    """Optimizer state for ``params`` alone."""
    rng: jax.Array
    """Run key; step ``s`` uses ``jax.random.fold_in(rng, s)``, so a resumed run is identical."""
    skipped: jax.Array
    """int32 scalar: updates skipped because the loss or a gradient was not finite."""


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


def init_state(params: PyTree, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed), skipped=jnp.zeros((), jnp.int32))


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


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> "np.ndarray":
    """The rows of step ``step``: epoch ``e = step // (n // batch_size)`` visits the permutation
    drawn from ``(seed, e)``; a function of the step alone, so resuming restores the data order."""
    import numpy as np

    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} rows)")
    epoch, i = divmod(int(step), per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size]


def trim_padding(batch, *, multiple: int, mask_key: str = "attention_mask"):
    """Cut the sequence columns (last axis) that are padding in EVERY row of a host batch, keeping
    the width a multiple of ``multiple`` (at most the original width) so that a run compiles a
    few shapes, not one per batch. Positions come from the mask, so the model's outputs on the
    real tokens do not change. ``batch``: a dict or NamedTuple of NumPy arrays; those shaped like
    the mask are cut, others (per-row margins, ranks) pass through; ``multiple=0`` returns it
    unchanged."""
    import numpy as np

    if not multiple:
        return batch
    items = batch._asdict() if hasattr(batch, "_asdict") else dict(batch)
    mask = np.asarray(items[mask_key])
    t = mask.shape[-1]
    used = np.nonzero(mask.reshape(-1, t).any(axis=0))[0]
    if used.size == 0:
        return batch
    lo, hi = int(used[0]), int(used[-1]) + 1
    width = min(t, -(-(hi - lo) // multiple) * multiple)
    if hi == t:  # left padded (or full): keep the last ``width`` columns
        lo = t - width
    else:
        lo = min(lo, t - width)
    cut = {k: np.asarray(v)[..., lo:lo + width] if np.shape(v) == mask.shape else v for k, v in items.items()}
    return type(batch)(**cut) if hasattr(batch, "_asdict") else cut
