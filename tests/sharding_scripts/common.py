"""Shared by the sharding scripts (each runs in its own process, with XLA_FLAGS set by the test
before JAX is imported): tiny models and batches, tree comparisons, the JSON report."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.model import ModelConfig, Transformer

# Adam divides by sqrt(v) + eps. With eps = 1e-8 a gradient of ~1e-7, whose last bits differ when a
# sharded sum adds its terms in another order (absolute differences ~1e-8), changes its update by
# ~1e-3 of the learning rate. A larger eps keeps the comparisons about sharding, not about
# Adam's conditioning; the gradients themselves (Adam's mu) are compared too.
ADAM_EPS = 1e-6


def tiny_llama(**kw) -> ModelConfig:
    base = dict(vocab_size=24, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                max_position_embeddings=32, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    base.update(kw)
    return ModelConfig(**base)


def tiny_gpt2(**kw) -> ModelConfig:
    base = dict(arch="gpt2", vocab_size=24, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=32, activation="gelu_new", norm_eps=1e-5, pad_token_id=0, eos_token_id=2)
    base.update(kw)
    return ModelConfig(**base)


def init_base(config: ModelConfig, seed: int = 0) -> dict:
    """Random float32 base with a scaled-up LM head (a peaked but not collapsed next-token law)."""
    init = jax.jit(Transformer(config.replace(dtype="float32")).init)
    params = init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    if "lm_head" in params:
        params = dict(params, lm_head=params["lm_head"] * 8.0)
    return jax.tree_util.tree_map(np.asarray, params)


def randomize_b(lora: dict, seed: int, scale: float = 0.3) -> dict:
    """Give a fresh adapter non-zero ``B`` so that it changes the model's output."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(lora)
    out = []
    for i, (path, x) in enumerate(leaves):
        if path[-1].key == "b":
            x = scale * jax.random.normal(jax.random.PRNGKey(seed + i), x.shape, jnp.float32)
        out.append(np.asarray(x))
    return jax.tree_util.tree_unflatten(treedef, out)


def token_batch(seed: int, batch: int, length: int, vocab: int, *, pad_rows: int = 0):
    """Random tokens ``[B, T]`` (ids >= 3), the first ``pad_rows`` rows left padded by 1..pad_rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for r in range(pad_rows):
        mask[r, : r + 1] = 0
        tokens[r, : r + 1] = 0
    return tokens, mask


def where_max_diff(a, b) -> tuple[str, float]:
    """The leaf path with the largest absolute difference, and that difference."""
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree_util.tree_leaves(b)
    best = ("", 0.0)
    for (path, x), y in zip(flat_a, flat_b):
        d = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        if d >= best[1]:
            best = (jax.tree_util.keystr(path), d)
    return best


def max_diff(a, b) -> float:
    """Largest absolute difference over every leaf of two trees (gathered to the host)."""
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                                       - np.asarray(y, np.float64)))), a, b)
    return max(jax.tree_util.tree_leaves(diffs), default=0.0)


def shard_info(x) -> dict:
    """Spec, global shape, the set of per-device shard shapes and the device count of an array."""
    return {"spec": [None if e is None else e if isinstance(e, str) else list(e) for e in x.sharding.spec],
            "shape": list(x.shape), "dtype": str(x.dtype),
            "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
            "devices": len(x.sharding.device_set)}


def report(results: dict) -> None:
    """Write the results as JSON to the path given as the first argument."""
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
