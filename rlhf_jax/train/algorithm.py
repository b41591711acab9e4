"""The shape of every algorithm (SFT, reward model, PPO, ...): a pair of pure functions, like an
optax ``GradientTransformation``.

    algo = make_X(model_config, optimizer, config)      # X in sft, reward, ppo, ...
    state = algo.init(key, base)                        # the trainable trees + optimizer state
    state, metrics = algo.step(state, base, batch)      # one update; jit it once yourself

``base`` is the frozen base (the reference model), always an argument and never closed over, so a
jitted step takes it as an input buffer and one copy serves every role. The library's own loop,
:func:`rlhf_jax.train.fit`, is one user of this pair; a user's loop needs nothing else.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

PyTree = Any


class Algorithm(NamedTuple):
    """``(init, step)``: ``init(key, base, **options) -> state``; ``step(state, base, batch) ->
    (state, metrics)``. Both pure; neither is jitted."""

    init: Callable[..., PyTree]
    """Builds the state: trainable tree(s), optimizer state, run key, counters."""
    step: Callable[[PyTree, PyTree, PyTree], tuple[PyTree, dict]]
    """One update on one batch; ``metrics`` are scalars (``skipped`` counts non-finite updates)."""


@functools.lru_cache(maxsize=32)
def _cached(make, model_config, config):
    from rlhf_jax.train.optim import make_optimizer

    return make(model_config, make_optimizer(config.optim), config)


def cached_algorithm(make: Callable[..., Algorithm], model_config, config) -> Algorithm:
    """``make(model_config, make_optimizer(config.optim), config)``, built once per
    ``(make, model_config, config without its run settings)``: the step is the same function object
    for every run of that setup, so ``jax.jit`` compiles it once per process (a resumed or repeated
    run in the same process reuses the executable). ``config.run`` never reaches a step."""
    import dataclasses

    return _cached(make, model_config, dataclasses.replace(config, run=type(config.run)()))
