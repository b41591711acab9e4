"""How much accelerator memory a LoRA (or full) SFT, reward or PPO run needs on one device: weights,
adapters and optimizer state exactly (from the abstract parameter trees, nothing allocated), the
KV cache exactly, activations and working sets by formula, for the model config's scale options
(layer scan, ``remat``, chunked attention) and the chunked vocabulary losses.

The working-set constants were fitted to XLA's memory analysis of the compiled steps
(``experiments/aot_memory.py``: Qwen2.5-0.5B / 7B and Llama-3.1-8B shapes, batch 8-16 x 1024,
remat on and off) and reproduce its temporaries within 20% on one device. They were measured on
XLA:CPU, which computes 16-bit floats in float32: on the CPU platform activations count 4 bytes
whatever the compute dtype, and the LM head is converted to float32 once per chunk. On an
accelerator the same counts use the compute dtype's size (no measurement backs that case here).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import LoraConfig, init_lora
from rlhf_jax.model import ModelConfig, Transformer

GiB = 1024 ** 3

# Fitted on XLA:CPU (see the module docstring): one block's backward working set is ~7 float
# arrays of the MLP width and ~4 of the model width per token; the vocabulary working set is ~2.2
# float32 logit chunks (3.2 when the entropy is computed from the same chunk: PPO's policy pass).
_MLP_ARRAYS, _WIDTH_ARRAYS, _LOGIT_CHUNKS, _LOGIT_CHUNKS_ENTROPY = 7.0, 4.0, 2.2, 3.2


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


class MemoryEstimate(NamedTuple):
    """Bytes, by kind. ``total`` = what is held throughout + the largest of the three phases
    (rollout, scoring, update)."""

    base: int
    """The frozen base, in ``config.dtype`` (held once: reference, policy, critic and reward share it)."""
    adapters: int
    """Every trainable tree (LoRA adapters in float32, or full copies) and head, and the frozen
    reward adapter + head."""
    grads: int
    """Gradients of the trainable trees (their dtype)."""
    optimizer: int
    """Adam's two moments of the trainable trees (their dtype; step counters not counted)."""
    kv_cache: int
    """Rollout phase: the sampler's cache ``2 L B S K H`` in the compute dtype."""
    experience: int
    """Scoring phase (no gradient), one group of ``mini_batch`` rows at a time: a block's forward
    working set and the vocabulary working set."""
    activations: int
    """Update phase: what the backward pass keeps of every block, for every trainable model, one
    minibatch. ``remat="block"``: each block's input, ``L M S D``; no remat: every block's
    activations ``L M S [(8 D + 2 (N + 2 K) H + 4 F) + 3 N S]`` (the last term: attention scores,
    masked scores and probabilities when the XLA kernel materialises them; on CPU, unrolled, also a
    float32 copy of the blocks' 16-bit weights)."""
    block: int
    """Update phase: one block's recompute + backward working set, ``M S (7 F + 4 D)`` (with
    remat; the attention's query blocks when they are larger)."""
    logits: int
    """Update phase: the vocabulary working set: chunked, ~2.2 (3.2 with the entropy) float32
    ``[M, C, V]`` logit chunks (+ a float32 head on CPU); unchunked, the float32 ``[M, S, V]``
    logits."""

    @property
    def held(self) -> int:
        return self.base + self.adapters + self.grads + self.optimizer

    @property
    def update(self) -> int:
        """The update step's temporaries: saved activations, the larger of the block and
        vocabulary working sets, the gradients and the optimizer's update."""
        return self.activations + max(self.block, self.logits) + 2 * self.grads

    @property
    def total(self) -> int:
        return self.base + self.adapters + self.optimizer + max(self.kv_cache, self.experience, self.update)

    def summary(self) -> str:
        rows = [(k, getattr(self, k)) for k in self._fields] + [("update", self.update), ("total", self.total)]
        return "\n".join(f"{k:>12}: {v / GiB:8.3f} GiB" for k, v in rows)


def memory_estimate(config: ModelConfig, lora: LoraConfig | None, batch: int, seq: int, *,
                    mini_batch: int | None = None, trainable_adapters: int = 2, frozen_adapters: int = 1,
                    full: bool = False, vocabulary: bool = True, entropy: bool | None = None,
                    logit_positions: int | None = None, chunk_size: int | None = 128,
                    platform: str | None = None) -> MemoryEstimate:
    """Estimate one device's memory for a run over one shared base.

    Defaults describe LoRA PPO (policy + critic adapters trained, a reward adapter frozen); SFT is
    ``trainable_adapters=1, frozen_adapters=0``; a reward model is that with ``vocabulary=False``.

    Args:
      config: the base model, with its scale options (``remat``, ``attention``, ...).
      lora: the adapters' config (all adapters alike); ``None``: no adapter (heads only).
      batch: rollout batch (rows generated at once); for SFT / reward, the batch.
      seq: tokens per row (prompt + response).
      mini_batch: rows per gradient update (default ``batch``).
      trainable_adapters: models trained together (2 for PPO: policy, critic; 1 for SFT).
      frozen_adapters: adapters only evaluated (1: the reward model).
      full: the trainable models are full float32 copies of the base (with their Adam state)
        instead of adapters.
      vocabulary: the update computes LM log-probs (SFT, PPO); ``False`` for a reward model.
      entropy: the log-prob pass also computes the entropy (default: PPO, ``trainable_adapters > 1``).
      logit_positions: positions whose log-probs are taken (default ``seq``; PPO: the response).
      chunk_size: positions per vocabulary chunk (:mod:`rlhf_jax.losses.chunked`); ``None``:
        full ``[M, S, V]`` logits.
      platform: ``"cpu"`` or an accelerator (default: JAX's default backend); see the module
        docstring.
    Returns:
      a :class:`MemoryEstimate` in bytes (``.summary()`` prints GiB). On a mesh, divide ``base``
      by ``fsdp * tensor`` and the activation terms by ``data * fsdp`` for a rough per-device
      figure (the gathered weights of one layer come on top; ``experiments/aot_memory.py``
      compiles the real thing).
    """
    m = batch if mini_batch is None else mini_batch
    platform = jax.default_backend() if platform is None else platform
    entropy = trainable_adapters > 1 if entropy is None else entropy
    tokens = jnp.zeros((1, 1), jnp.int32)
    params = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), tokens)["params"]
    base, blocks = _bytes(params), _bytes(params["layers"])
    adapter = 0
    if full:
        adapter = base * 4 // config.jnp_dtype.itemsize  # float32 master copy
    elif lora is not None:
        model = Transformer(config, lora=lora)
        adapter = _bytes(jax.eval_shape(lambda k: init_lora(model, k), jax.random.PRNGKey(0)))
    head = 4 * (config.hidden_size + 1)
    # a value head per trainable model beyond the policy's, a score head per frozen adapter
    trainable = trainable_adapters * adapter + max(trainable_adapters - 1, 0) * head
    frozen = frozen_adapters * ((0 if full else adapter) + head)

    c = config
    d, n, k, h, f, v, layers = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                                c.vocab_size, c.num_layers)
    act = 4 if platform == "cpu" else c.compute_jnp_dtype.itemsize
    q_block = min(seq, c.attention_chunk) if c.attention in ("auto", "chunked") else seq
    scores = 4 * 2 * n * q_block * seq  # float32 scores + probabilities of one query block, per row
    if c.remat == "none":
        per_token = act * (8 * d + 2 * (n + 2 * k) * h + 4 * f) + (4 * 3 * n * seq if q_block == seq else 0)
        saved = layers * m * seq * per_token
    else:
        saved = layers * m * seq * d * act
    if platform == "cpu" and c.compute_jnp_dtype.itemsize < 4 and not c.scan_layers and c.remat == "none":
        # unrolled, nothing rematerialised: XLA:CPU's float32 copies of every block's 16-bit
        # weights stay alive from the forward to the backward pass
        saved += blocks * 4 // c.jnp_dtype.itemsize // max(trainable_adapters, 1)
    block = max(m * seq * act * (_MLP_ARRAYS * f + _WIDTH_ARRAYS * d), m * scores)
    positions = seq if logit_positions is None else logit_positions
    if not vocabulary or not trainable_adapters:
        logits = 0
    elif chunk_size is None:
        logits = 4 * m * positions * v
    else:
        chunks = _LOGIT_CHUNKS_ENTROPY if entropy else _LOGIT_CHUNKS
        head_f32 = 4 * v * d if platform == "cpu" and c.compute_jnp_dtype.itemsize < 4 else 0
        logits = int(chunks * 4 * m * min(chunk_size, positions) * v) + head_f32
    experience = int(m * seq * act * (2 * f + 4 * d)) + (logits if vocabulary else 0)
    return MemoryEstimate(
        base=base, adapters=trainable + frozen, grads=trainable, optimizer=2 * trainable,
        kv_cache=2 * layers * batch * seq * k * h * c.compute_jnp_dtype.itemsize,
        experience=experience, activations=int(trainable_adapters * saved), block=int(block), logits=int(logits))
