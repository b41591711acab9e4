"""A jitted sampler: :func:`generate` compiled once per (batch, prompt length) shape."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.rollout.config import SamplingConfig
from rlhf_jax.rollout.generate import Rollout, generate


class Sampler:
    """``sampler(variables, prompt_tokens, prompt_mask, key) -> Rollout``, jitted.

    The model and the (hashable, frozen) :class:`SamplingConfig` are closed over, so XLA compiles
    once per input shape: (batch, prompt length) -- ``max_new_tokens`` is part of the config --
    and per variables structure (base alone, or base + adapter). Use
    :func:`rlhf_jax.rollout.left_pad` with a bucket so that a dataset's prompts map to a few
    prompt lengths. ``trace_count`` counts traces (each one is a compilation).
    """

    def __init__(self, model, config: SamplingConfig):
        config.resolve(model.config)  # fail now, not at the first call, when no pad id is known
        self.model = model
        self.config = config
        self.trace_count = 0
        self._jitted = jax.jit(self._generate)

    def _generate(self, variables, prompt_tokens, prompt_mask, key) -> Rollout:
        self.trace_count += 1  # Python side effect: runs once per trace, never in compiled code
        return generate(variables, prompt_tokens, prompt_mask, key, model=self.model, config=self.config)

    def __call__(self, variables: dict, prompt_tokens, prompt_mask, key: jax.Array) -> Rollout:
        """See :func:`rlhf_jax.rollout.generate`; arrays may be NumPy (converted to int32)."""
        if not isinstance(prompt_mask, jax.core.Tracer):
            mask = np.asarray(prompt_mask)
            if mask.ndim != 2 or mask.shape != np.shape(prompt_tokens):
                raise ValueError(f"prompt_tokens {np.shape(prompt_tokens)} and prompt_mask "
                                 f"{mask.shape} must both be [B, P]")
            if not np.all(mask[:, -1] > 0):
                rows = np.nonzero(mask[:, -1] <= 0)[0].tolist()
                raise ValueError(f"prompts must be LEFT padded (the last column real): rows {rows} "
                                 "end with padding; use rlhf_jax.rollout.left_pad")
        return self._jitted(variables, jnp.asarray(prompt_tokens, jnp.int32),
                            jnp.asarray(prompt_mask, jnp.int32), key)

    def cache_size(self) -> int:
        """Number of compiled executables held by the underlying ``jax.jit``."""
        return self._jitted._cache_size()


def make_generate_fn(model, config: SamplingConfig) -> Sampler:
    """A :class:`Sampler` for ``model`` and ``config`` (jit once, reuse for every batch)."""
    return Sampler(model, config)


@functools.lru_cache(maxsize=32)
def cached_sampler(model_config, lora, config: SamplingConfig) -> Sampler:
    """One :class:`Sampler` per ``(model config, LoRA config, sampling config)`` in this process,
    so that sampling again (every N training steps, another run of the same setup) reuses the
    compiled programs."""
    from rlhf_jax.model import Transformer

    return Sampler(Transformer(model_config, lora=lora), config)
