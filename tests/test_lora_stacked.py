"""Stacked adapters: G row groups of one pass over the shared base, each with its own adapter,
equal the G separate passes (outputs and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig, init_lora, stack_adapters
from rlhf_jax.model import ModelConfig, Transformer, lm_logits

LLAMA = ModelConfig(arch="llama", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, intermediate_size=48)
GPT2 = ModelConfig(arch="gpt2", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                   max_position_embeddings=32, qkv_bias=True, o_bias=True, mlp_bias=True,
                   tie_word_embeddings=True, activation="gelu_new", norm_eps=1e-5)

# three different adapters: ranks 4 and 2, different alphas, different targets
CFG_A = LoraConfig(rank=4, alpha=8.0)
CFG_B = LoraConfig(rank=2, alpha=7.0, targets=("q_proj", "v_proj", "c_attn"))
CFG_C = LoraConfig(rank=3, alpha=3.0, targets=("down_proj", "up_proj", "c_fc"))


def _adapter(cfg, lcfg, seed):
    """A trained-looking adapter: random A and (non-zero) random B."""
    tree = init_lora(Transformer(cfg, lora=lcfg), jax.random.PRNGKey(seed))
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _setup(cfg):
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0, cfg.vocab_size)
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [0, 1, 1, 1, 1, 1, 1]], jnp.int32)
    base = Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]
    groups = [(_adapter(cfg, CFG_A, 1), CFG_A), (None, None), (_adapter(cfg, CFG_B, 2), CFG_B),
              (_adapter(cfg, CFG_C, 3), CFG_C)]
    return base, tokens, mask, groups


def _separate(cfg, base, tokens, mask, tree, lcfg):
    variables = {"params": base} if tree is None else {"params": base, "lora": tree}
    return Transformer(cfg, lora=lcfg).apply(variables, tokens, attention_mask=mask, return_hidden=True)


def _stacked(cfg, base, tokens, mask, groups):
    tree, lcfg = stack_adapters(groups)
    g = len(groups)
    out = Transformer(cfg, lora=lcfg).apply({"params": base, "lora": tree}, jnp.tile(tokens, (g, 1)),
                                            attention_mask=jnp.tile(mask, (g, 1)), return_hidden=True)
    b = tokens.shape[0]
    return [(out.logits[i * b:(i + 1) * b], out.hidden[i * b:(i + 1) * b]) for i in range(g)]


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_stacked_pass_equals_separate_passes(cfg):
    base, tokens, mask, groups = _setup(cfg)
    stacked = _stacked(cfg, base, tokens, mask, groups)
    for (tree, lcfg), (logits, hidden) in zip(groups, stacked):
        ref = _separate(cfg, base, tokens, mask, tree, lcfg)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(ref.logits), atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(hidden), np.asarray(ref.hidden), atol=2e-5, rtol=1e-5)
    # the adapters do something: the groups differ from the base group
    assert float(jnp.max(jnp.abs(stacked[0][0] - stacked[1][0]))) > 1e-3


def test_stacked_gradients_reach_each_adapter_as_in_separate_passes():
    cfg = LLAMA
    base, tokens, mask, groups = _setup(cfg)
    trees = [t for t, _ in groups]

    def stacked_loss(trees):
        outs = _stacked(cfg, base, tokens, mask, [(t, c) for t, (_, c) in zip(trees, groups)])
        return sum((k + 1.0) * jnp.mean(jnp.tanh(lg)) for k, (lg, _) in enumerate(outs))

    def separate_loss(trees):
        return sum((k + 1.0) * jnp.mean(jnp.tanh(_separate(cfg, base, tokens, mask, t, c).logits))
                   for k, (t, (_, c)) in enumerate(zip(trees, groups)))

    g_stacked = jax.grad(stacked_loss)(trees)
    g_sep = jax.grad(separate_loss)(trees)
    assert g_stacked[1] is None and g_sep[1] is None
    for gs, gp in zip(g_stacked, g_sep):
        if gs is None:
            continue
        jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6,
                                                                       rtol=1e-4), gs, gp)
        assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree_util.tree_leaves(gs))


def test_stack_pads_ranks_folds_scales_and_fills_missing_layers():
    base, tokens, mask, groups = _setup(LLAMA)
    tree, lcfg = stack_adapters(groups)
    assert lcfg.rank == 4 and lcfg.scale == 1.0 and lcfg.dropout == 0.0
    q = tree["layers"]["attn"]["q_proj"]  # [L, G, ...]: the group axis after the layer axis
    assert q["a"].shape == (2, 4, 32, 4) and q["b"].shape == (2, 4, 4, 32)
    a_b = groups[2][0]["layers"]["attn"]["q_proj"]  # rank 2, scale 3.5
    np.testing.assert_array_equal(np.asarray(q["a"][:, 2, :, :2]), np.asarray(a_b["a"]))
    np.testing.assert_array_equal(np.asarray(q["a"][:, 2, :, 2:]), 0.0)
    np.testing.assert_allclose(np.asarray(q["b"][:, 2, :2]), 3.5 * np.asarray(a_b["b"]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q["b"][:, 2, 2:]), 0.0)
    np.testing.assert_array_equal(np.asarray(q["a"][:, 1]), 0.0)  # the base group
    np.testing.assert_array_equal(np.asarray(q["a"][:, 3]), 0.0)  # CFG_C does not adapt q_proj
    down = tree["layers"]["mlp"]["down_proj"]
    np.testing.assert_array_equal(np.asarray(down["b"][:, 2]), 0.0)
    assert stack_adapters([(None, None), (None, None)]) == (None, None)


def test_rows_that_do_not_split_into_groups_are_an_error():
    base, tokens, mask, groups = _setup(LLAMA)
    tree, lcfg = stack_adapters(groups)
    with pytest.raises(ValueError, match="do not split into 4 adapter groups"):
        Transformer(LLAMA, lora=lcfg).apply({"params": base, "lora": tree}, tokens[:2].repeat(3, 0)[:5])


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_lm_logits_from_hidden_equals_the_model_logits(cfg):
    base, tokens, mask, _ = _setup(cfg)
    out = Transformer(cfg).apply({"params": base}, tokens, attention_mask=mask, return_hidden=True)
    np.testing.assert_allclose(np.asarray(lm_logits(cfg, base, out.hidden)), np.asarray(out.logits), atol=1e-6)


def test_per_layer_trees_are_stacked_on_load_and_refused_unstacked(tmp_path):
    """Files written before the blocks were stacked hold ``layers_0``, ``layers_1``...: an adapter
    in that layout would be an unused variable collection (the model silently running as the bare
    base), so model_variables refuses it; stack_layer_modules (and load_reward_model) restack it."""
    from rlhf_jax.lora import Adapter, model_variables, stack_layer_modules
    from rlhf_jax.scoring import RewardModel, load_reward_model, reward_scores, save_reward_model

    base, tokens, mask, _ = _setup(LLAMA)
    tree = _adapter(LLAMA, CFG_A, 1)
    per_layer = {f"layers_{i}": jax.tree_util.tree_map(lambda x: x[i], tree["layers"]) for i in range(2)}
    with pytest.raises(ValueError, match=r"adapter modules \['layers_0', 'layers_1'\] are not in the base.*"
                                         r"stack_layer_modules"):
        model_variables(base, Adapter(per_layer, CFG_A))
    restacked = stack_layer_modules(per_layer)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restacked, tree)
    assert stack_layer_modules(tree) is tree  # already stacked: unchanged
    with pytest.raises(ValueError, match="expected layers_0..layers_1"):
        stack_layer_modules({"layers_0": per_layer["layers_0"], "layers_2": per_layer["layers_1"]})
    # a reward model saved in the old layout loads stacked and scores as the stacked original
    head = {"kernel": jnp.linspace(-1.0, 1.0, LLAMA.hidden_size), "bias": jnp.zeros(())}
    old = RewardModel(Adapter(per_layer, CFG_A), head, 1.0, 0.0)
    loaded = load_reward_model(save_reward_model(str(tmp_path / "rm"), old))
    want = reward_scores(LLAMA, RewardModel(Adapter(tree, CFG_A), head, 1.0, 0.0), base, tokens, mask)
    np.testing.assert_allclose(reward_scores(LLAMA, loaded, base, tokens, mask), want, rtol=1e-6)
