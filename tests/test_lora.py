"""LoRA: a separate `lora` collection over a frozen base."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.lora import LoraConfig, adapted_layers, init_lora, merge_lora, split_lora, tree_size
from rlhf_jax.model import ModelConfig, Transformer

LLAMA = ModelConfig(arch="llama", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, intermediate_size=48)
GPT2 = ModelConfig(arch="gpt2", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                   max_position_embeddings=32, qkv_bias=True, o_bias=True, mlp_bias=True,
                   tie_word_embeddings=True, activation="gelu_new", norm_eps=1e-5)


def _setup(cfg, lcfg=LoraConfig(rank=4, alpha=8.0)):
    model = Transformer(cfg, lora=lcfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, cfg.vocab_size)
    base = Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]
    lora = init_lora(model, jax.random.PRNGKey(2))
    return model, base, lora, tokens


def _lm_loss(model, base, lora, tokens):
    logits = model.apply({"params": base, "lora": lora}, tokens).logits
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_adapter_tree_structure_and_identity_at_init(cfg):
    model, base, lora, tokens = _setup(cfg)
    layers = adapted_layers(lora)
    expected = (["q_proj", "k_proj", "v_proj", "o_proj"] if cfg.arch == "llama" else ["c_attn", "c_proj"])
    for name in expected:  # stacked over the layers: one tree entry per dense layer
        assert ("layers", "attn", name) in layers
    for layer in layers:  # every adapter: A [L, Din, R] random, B [L, R, Dout] zero
        node = lora
        for n in layer:
            node = node[n]
        assert node["a"].shape[0] == node["b"].shape[0] == cfg.num_layers
        assert node["a"].shape[2] == 4 and node["b"].shape[1] == 4
        assert np.all(np.any(np.asarray(node["a"]) != 0, axis=(1, 2)))  # every layer's A is random
        assert not np.any(np.asarray(node["b"]))
    with_adapter = model.apply({"params": base, "lora": lora}, tokens).logits
    without = model.apply({"params": base}, tokens).logits
    np.testing.assert_array_equal(np.asarray(with_adapter), np.asarray(without))


def test_targets_select_layers():
    model, _, lora, _ = _setup(GPT2, LoraConfig(rank=2, targets=("attn/c_proj",)))
    assert adapted_layers(lora) == [("layers", "attn", "c_proj")]


def test_a_per_layer_target_adapts_that_layer_only():
    """``layers_1/attn/q_proj`` selects one layer of the stacked q_proj: layer 0's rows start at
    zero, get no gradient, stay zero under Adam, and the merged base differs in layer 1 only."""
    lcfg = LoraConfig(rank=2, alpha=4.0, targets=("layers_1/attn/q_proj",))
    assert lcfg.layer_selection("layers/attn/q_proj", 2) == (False, True)
    assert lcfg.layer_selection("layers/attn/k_proj", 2) == (False, False)
    model, base, lora, tokens = _setup(LLAMA, lcfg)
    assert adapted_layers(lora) == [("layers", "attn", "q_proj")]
    q = lambda t: t["layers"]["attn"]["q_proj"]
    assert not np.any(np.asarray(q(lora)["a"][0])) and np.any(np.asarray(q(lora)["a"][1]))
    opt = optax.adam(1e-2)
    opt_state = opt.init(lora)
    for _ in range(3):
        grads = jax.grad(lambda l: _lm_loss(model, base, l, tokens))(lora)
        assert not np.any(np.asarray(q(grads)["a"][0])) and not np.any(np.asarray(q(grads)["b"][0]))
        updates, opt_state = opt.update(grads, opt_state)
        lora = optax.apply_updates(lora, updates)
    assert not np.any(np.asarray(q(lora)["a"][0])) and np.any(np.asarray(q(lora)["b"][1]))
    merged = merge_lora(base, lora, scale=lcfg.scale)
    np.testing.assert_array_equal(np.asarray(q(merged)["kernel"][0]), np.asarray(q(base)["kernel"][0]))
    assert np.any(np.asarray(q(merged)["kernel"][1]) != np.asarray(q(base)["kernel"][1]))
    adapted = model.apply({"params": base, "lora": lora}, tokens).logits
    np.testing.assert_allclose(np.asarray(Transformer(LLAMA).apply({"params": merged}, tokens).logits),
                               np.asarray(adapted), atol=1e-5)
    # rows of an unselected layer do nothing even when they are not zero (the layer masks them)
    noisy = jax.tree_util.tree_map(lambda x: x.at[0].add(1.0), lora)
    np.testing.assert_array_equal(np.asarray(model.apply({"params": base, "lora": noisy}, tokens).logits),
                                  np.asarray(adapted))


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_training_the_adapter_leaves_base_bit_identical_and_merge_matches(cfg):
    model, base, lora, tokens = _setup(cfg)
    base_before = jax.tree_util.tree_map(np.array, base)
    opt = optax.adam(1e-2)
    opt_state = opt.init(lora)
    n_lora, _ = tree_size(lora)
    # Adam keeps two moments per trainable parameter (+ a step count): nothing for the base.
    n_state = sum(x.size for x in jax.tree_util.tree_leaves(opt_state))
    assert n_state == 2 * n_lora + 1

    @jax.jit
    def step(lora, opt_state):
        loss, grads = jax.value_and_grad(lambda l: _lm_loss(model, base, l, tokens))(lora)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(lora, updates), opt_state, loss

    losses = []
    for _ in range(5):
        lora, opt_state, loss = step(lora, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, base_before, jax.tree_util.tree_map(np.array, base))

    merged = merge_lora(base, lora, scale=model.lora.scale)
    adapted = model.apply({"params": base, "lora": lora}, tokens).logits
    from_merged = Transformer(cfg).apply({"params": merged}, tokens).logits
    assert np.max(np.abs(np.asarray(adapted) - np.asarray(from_merged))) <= 1e-5
    assert np.max(np.abs(np.asarray(adapted) - np.asarray(model.apply({"params": base}, tokens).logits))) > 1e-4

    # split recovers an adapter with the same product A B (rank-4 update, exact up to float32)
    back = split_lora(merged, base, rank=4, alpha=8.0)
    for layer in adapted_layers(lora):
        a0, b0 = (lora, back)
        for n in layer:
            a0, b0 = a0[n], b0[n]
        np.testing.assert_allclose(np.asarray(a0["a"] @ a0["b"]), np.asarray(b0["a"] @ b0["b"]), atol=1e-5)


def test_gradients_reach_only_the_adapter():
    model, base, lora, tokens = _setup(LLAMA)
    g_lora = jax.grad(lambda l: _lm_loss(model, base, l, tokens))(lora)
    # At init B = 0, so dL/dA = 0 and dL/dB != 0 for every adapted layer.
    for layer in adapted_layers(g_lora):
        node = g_lora
        for n in layer:
            node = node[n]
        assert np.any(np.asarray(node["b"]))
        assert np.all(np.isfinite(np.asarray(node["a"])))
    # The base is a closed-over constant of that function: the same gradient computed over
    # (base, lora) with the base wrapped in stop_gradient is zero for the base.
    g_base, _ = jax.grad(lambda b, l: _lm_loss(model, jax.lax.stop_gradient(b), l, tokens), argnums=(0, 1))(base, lora)
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(g_base))


def test_dropout_only_when_not_deterministic():
    model, base, lora, tokens = _setup(LLAMA, LoraConfig(rank=4, dropout=0.5))
    lora = jax.tree_util.tree_map(lambda x: x + 0.1, lora)  # make B nonzero
    v = {"params": base, "lora": lora}
    det = model.apply(v, tokens).logits
    np.testing.assert_array_equal(np.asarray(det), np.asarray(model.apply(v, tokens).logits))
    drop = model.apply(v, tokens, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}).logits
    assert np.max(np.abs(np.asarray(drop) - np.asarray(det))) > 1e-4


def test_config_validation():
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="init"):
        LoraConfig(init="xavier")
    with pytest.raises(ValueError, match="without a LoraConfig"):
        init_lora(Transformer(LLAMA), jax.random.PRNGKey(0))


def test_lora_matmul_values_and_gradients_equal_the_unmerged_formula():
    from rlhf_jax.model.layers import lora_matmul

    ks = jax.random.split(jax.random.PRNGKey(3), 5)
    x, w = jax.random.normal(ks[0], (40, 12)), jax.random.normal(ks[1], (12, 9))
    a, b = jax.random.normal(ks[2], (12, 3)), jax.random.normal(ks[3], (3, 9))
    g = jax.random.normal(ks[4], (40, 9))
    plain = lambda x, w, a, b: x @ w + (x @ a) @ b
    np.testing.assert_allclose(lora_matmul(x, w, a, b), plain(x, w, a, b), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda *args: jnp.sum(f(*args) * g)
    ours = jax.grad(loss(lora_matmul), argnums=(0, 1, 2, 3))(x, w, a, b)
    ref = jax.grad(loss(plain), argnums=(0, 1, 2, 3))(x, w, a, b)
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-4, atol=1e-4)


def test_dense_uses_the_merged_kernel_only_for_many_rows_and_float32():
    """Many rows: the merged path; one decode row, bfloat16 kernels or active dropout: the
    unmerged one; the outputs agree either way."""
    import flax.linen as nn

    from rlhf_jax.model.layers import Dense

    class Wrap(nn.Module):
        lora: LoraConfig
        dtype: jnp.dtype = jnp.float32

        @nn.compact
        def __call__(self, x):
            return Dense(6, lora=self.lora, dtype=self.dtype, name="d")(x)

    lcfg = LoraConfig(rank=2, alpha=4.0, targets=("d",), dropout=0.0)
    layer = Wrap(lcfg)
    for rows in (1, 64):
        x = jax.random.normal(jax.random.PRNGKey(rows), (rows, 5))
        v = layer.init(jax.random.PRNGKey(0), x)
        v = {"params": v["params"], "lora": {"d": {"a": v["lora"]["d"]["a"], "b": jnp.ones((2, 6))}}}
        jaxpr = str(jax.make_jaxpr(lambda v, x: layer.apply(v, x))(v, x))
        assert ("custom_vjp_call" in jaxpr) == (rows == 64)
        ref = x @ v["params"]["d"]["kernel"] + 2.0 * (x @ v["lora"]["d"]["a"]) @ v["lora"]["d"]["b"]
        np.testing.assert_allclose(np.asarray(layer.apply(v, x)), np.asarray(ref), rtol=1e-5, atol=1e-5)
    bf = Wrap(lcfg, jnp.bfloat16)
    v16 = {"params": jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), v["params"]), "lora": v["lora"]}
    assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda v, x: bf.apply(v, x))(v16, x))
