"""How much accelerator memory a LoRA PPO run needs on one device (divide the sharded parts by the
mesh axes they are split over): weights and optimizer state exactly (from the abstract parameter
trees, nothing allocated), activations by formula."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import LoraConfig, init_lora
from rlhf_jax.model import ModelConfig, Transformer

GiB = 1024 ** 3


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


class MemoryEstimate(NamedTuple):
    """Bytes, by kind. ``total`` = what is held throughout + the largest of the three phases
    (rollout, scoring, update)."""

    base: int
    """The frozen base, in ``config.dtype`` (held once: reference, policy, critic and reward share it)."""
    adapters: int
    """Every LoRA adapter (float32) and head: trainable (policy, critic) and frozen (reward)."""
    grads: int
    """float32 gradients of the trainable adapters and the value head."""
    optimizer: int
    """Adam's two float32 moments of the trainable tree (its step counters are not counted)."""
    kv_cache: int
    """Rollout phase: the sampler's cache ``2 L B S K H`` in ``config.dtype``."""
    experience: int
    """Scoring phase (no gradient): the policy's and the reference's float32 logits over the
    whole rollout batch, ``2 * 4 B S V`` (an upper bound: only the response slice is used)."""
    activations: int
    """Update phase: what the backward pass keeps of each block, per trainable model, for one
    minibatch without rematerialisation: ``L * M * S * [itemsize * (8 D + 2 (N + 2K) H + 4 F)
    + 4 * 2 N S]`` (block inputs, norms, q/k/v, attention output, MLP gate/up/product, and the
    float32 attention scores and probabilities)."""
    logits: int
    """Update phase: the policy's float32 logits, log-softmax and their gradient ``3 * 4 M S V``."""

    @property
    def held(self) -> int:
        return self.base + self.adapters + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.held + max(self.kv_cache, self.experience, self.activations + self.logits)

    def summary(self) -> str:
        rows = [(k, getattr(self, k)) for k in self._fields] + [("total", self.total)]
        return "\n".join(f"{k:>12}: {v / GiB:8.3f} GiB" for k, v in rows)


def memory_estimate(config: ModelConfig, lora: LoraConfig | None, batch: int, seq: int, *,
                    mini_batch: int | None = None, trainable_adapters: int = 2,
                    frozen_adapters: int = 1) -> MemoryEstimate:
    """Estimate one device's memory for LoRA PPO (policy + critic adapters trained, a reward adapter
    frozen, one shared base).

    Args:
      config: the base model.
      lora: the adapters' config (all adapters alike); ``None``: no adapter (heads only).
      batch: rollout batch (rows generated at once).
      seq: prompt + response length.
      mini_batch: rows per gradient update (default ``batch``).
      trainable_adapters: adapters trained together (2 for PPO: policy, critic; 1 for SFT).
      frozen_adapters: adapters only evaluated (1: the reward model).
    Returns:
      a :class:`MemoryEstimate` in bytes (``.summary()`` prints GiB). On a mesh, divide ``base``
      by ``fsdp * tensor`` and ``activations``/``logits``/``kv_cache`` by ``data * fsdp`` (and the
      heads / vocabulary parts by ``tensor``) for a per-device figure.
    """
    m = batch if mini_batch is None else mini_batch
    tokens = jnp.zeros((1, 1), jnp.int32)
    base = _bytes(jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), tokens)["params"])
    adapter = 0
    if lora is not None:
        model = Transformer(config, lora=lora)
        adapter = _bytes(jax.eval_shape(lambda k: init_lora(model, k), jax.random.PRNGKey(0)))
    head = 4 * (config.hidden_size + 1)
    # a value head per trainable adapter beyond the policy's, a score head per frozen adapter
    trainable = trainable_adapters * adapter + max(trainable_adapters - 1, 0) * head
    frozen = frozen_adapters * (adapter + head)
    c, b = config, config.jnp_dtype.itemsize
    d, n, k, h, f, v, layers = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                                c.vocab_size, c.num_layers)
    per_token = b * (8 * d + 2 * (n + 2 * k) * h + 4 * f) + 4 * 2 * n * seq
    return MemoryEstimate(
        base=base, adapters=trainable + frozen, grads=trainable, optimizer=2 * trainable,
        kv_cache=2 * layers * batch * seq * k * h * b,
        experience=2 * 4 * batch * seq * v,
        activations=trainable_adapters * layers * m * seq * per_token,
        logits=(3 * 4 * m * seq * v) if trainable_adapters else 0)
