"""Packed rows (segment ids): each segment computes exactly what its example computes alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.model import ModelConfig, Transformer, positions_from_segments


def test_positions_from_segments_hand_worked():
    seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0],
                     [1, 2, 2, 2, 2, 2, 2, 2]])
    # each run of equal ids restarts at 0 (the padding run 0 too; its positions are never used)
    expected = [[0, 1, 2, 0, 1, 0, 0, 1],
                [0, 0, 1, 2, 3, 4, 5, 6]]
    np.testing.assert_array_equal(positions_from_segments(seg), expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_row_equals_examples_alone(arch):
    cfg = ModelConfig(arch=arch, vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                      num_kv_heads=2 if arch == "llama" else None, max_position_embeddings=32)
    model = Transformer(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    lengths = [5, 3, 6]
    examples = [rng.integers(1, 50, size=n).astype(np.int32) for n in lengths]
    width = 16  # 14 real tokens + 2 padding
    tokens = np.zeros((1, width), np.int32)
    seg = np.zeros((1, width), np.int32)
    at = 0
    for s, ex in enumerate(examples, 1):
        tokens[0, at:at + len(ex)] = ex
        seg[0, at:at + len(ex)] = s
        at += len(ex)
    packed = model.apply({"params": params}, jnp.asarray(tokens), segment_ids=jnp.asarray(seg)).logits[0]
    at = 0
    for ex in examples:
        alone = model.apply({"params": params}, jnp.asarray(ex)[None]).logits[0]
        np.testing.assert_allclose(packed[at:at + len(ex)], alone, atol=1e-5, rtol=1e-5)
        at += len(ex)
    assert np.all(np.isfinite(np.asarray(packed)))  # padding rows stay finite
