"""The state every single-model algorithm (SFT, reward model, DPO...) carries from step to step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

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
