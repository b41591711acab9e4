"""How much memory a DPO run holds on one device: the frozen base (the reference) and the policy
(a LoRA adapter, or with full fine-tuning a second full copy), its gradient and Adam's moments,
exactly from the abstract trees (nothing allocated); the update's activations by the formula of
:func:`rlhf_jax.sharding.memory_estimate` over the positions of a pair with its prompt once."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.lora import tree_size
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.sharding import memory_estimate
from rlhf_jax.train.dpo.config import DPOConfig
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.trainable import init_trainable

GiB = 1024 ** 3


class DPOMemory(NamedTuple):
    """Bytes, by kind; ``total`` = ``held`` + the update's ``activations`` + ``logits``."""

    base: int
    """The frozen base in ``config.dtype``: the reference (held even with full fine-tuning, unless
    the reference log-probs are cached, after which the base could be dropped)."""
    policy: int
    """The trainable tree: the adapter (float32), or with ``lora=None`` a full copy of the base."""
    grads: int
    """The policy's gradient (its dtypes)."""
    optimizer: int
    """The optimizer state of the policy (Adam's two moments)."""
    activations: int
    """What the backward pass keeps per block for ``batch_size`` pairs of ``P + 2 C`` positions."""
    logits: int
    """float32 logits, log-softmax and their gradient at the ``2 C`` completion positions."""

    @property
    def held(self) -> int:
        return self.base + self.policy + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.held + self.activations + self.logits

    def summary(self) -> str:
        rows = [(k, getattr(self, k)) for k in self._fields] + [("total", self.total)]
        return "\n".join(f"{k:>12}: {v / GiB:8.3f} GiB" for k, v in rows)


def dpo_memory(model_config: ModelConfig, config: DPOConfig) -> DPOMemory:
    """Estimate one device's memory for :func:`rlhf_jax.train.train_dpo` with ``config``
    (``batch_size`` pairs of ``max_prompt_length`` + 2 x ``max_completion_length`` tokens).
    Full fine-tuning (``config.lora=None``) holds the weights twice (policy + frozen reference)
    plus the gradient and Adam's moments of the copy: about 4x the base in the parameters' dtype
    (float32 Adam: more), against 1x + a few adapter-sized trees with LoRA."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    base = jax.eval_shape(Transformer(model_config).init, jax.random.PRNGKey(0), tokens)["params"]
    policy = jax.eval_shape(lambda b, k: init_trainable(model_config, b, config.lora, k), base,
                            jax.random.PRNGKey(0))
    opt = jax.eval_shape(make_optimizer(config.optim).init, policy)
    positions = config.max_prompt_length + 2 * config.max_completion_length
    act = memory_estimate(model_config, config.lora, config.batch_size, positions, trainable_adapters=1,
                          frozen_adapters=0)
    completion = 2 * config.max_completion_length
    return DPOMemory(base=tree_size(base)[1], policy=tree_size(policy)[1], grads=tree_size(policy)[1],
                     optimizer=tree_size(opt)[1], activations=act.activations,
                     logits=3 * 4 * config.batch_size * completion * model_config.vocab_size)
