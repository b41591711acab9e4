"""The prompt computed once per group (rlhf_jax.rollout.shared_prefix) against the plain forward pass
over the concatenated sequences (rlhf_jax.rollout.response_* / rlhf_jax.scoring.hidden_states):
values AND gradients (w.r.t. the adapter and the base) within 1e-5, with left-padded prompts of
different lengths, right-padded completions, GQA, LoRA on, G = 2 and G = 4; the reward model's
scores and loss through both batch layouts; the host layout that splits whole sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import Adapter, LoraConfig, init_lora
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.rollout import (grouped_hidden, grouped_response_logits, grouped_response_logprobs,
                              response_logits, response_logprobs)
from rlhf_jax.scoring import RewardModel, hidden_states
from rlhf_jax.train import RewardConfig, preference_scores, reward_loss
from rlhf_jax.train.grouped_batches import grouped_rows, layout_groups, split_shared_prefix
from tests.trainer_fixtures import tiny_base, tiny_config

ATOL = 1e-5


def assert_trees_close(a, b, what="", *, nonzero=True):
    """Per tensor, max |a - b| <= 1e-5 * max(1, max |b|): within 1e-5 of the tensor's own scale.
    (Gradients here reach ~45, e.g. the embedding's, whose entries sum many terms; two float32
    summation orders differ by ~1e-6 of that scale: measured 1.2e-6.) ``nonzero``: every tensor of
    ``b`` is non-zero (a comparison of zeros proves nothing)."""
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
    assert len(flat_a) == len(flat_b), what
    for (path, x), y in zip(flat_a, flat_b):
        scale = max(1.0, float(jnp.abs(y).max()))
        assert not nonzero or float(jnp.abs(y).max()) > 1e-4, f"{what} {jax.tree_util.keystr(path)}: zero gradient"
        assert float(jnp.abs(x - y).max()) <= ATOL * scale, f"{what} {jax.tree_util.keystr(path)}"


def _adapter(cfg, seed=1):
    """A LoRA adapter with B != 0 (a fresh one is the identity and has zero gradient w.r.t. A)."""
    lc = LoraConfig(rank=2, alpha=4.0)
    tree = init_lora(Transformer(cfg, lora=lc), jax.random.PRNGKey(seed))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 64))
    return Adapter(jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), tree), lc)


def _batch(g, *, b=3, p=6, n=5, vocab=20, seed=0):
    """Left-padded prompts of lengths 6, 1, 3 (one fills the width); right-padded completions of
    every length from 1 to n (one fills the width)."""
    rng = np.random.default_rng(seed)
    plen = np.array([p, 1, 3])[:b]
    pt = rng.integers(3, vocab, (b, p)).astype(np.int32)
    pm = (np.arange(p)[None] >= p - plen[:, None]).astype(np.int32)
    clen = 1 + np.arange(b * g) % n
    ct = rng.integers(3, vocab, (b * g, n)).astype(np.int32)
    cm = (np.arange(n)[None] < clen[:, None]).astype(np.int32)
    pt, ct = np.where(pm > 0, pt, 0), np.where(cm > 0, ct, 0)
    full = np.concatenate([np.repeat(pt, g, 0), ct], 1)
    fmask = np.concatenate([np.repeat(pm, g, 0), cm], 1)
    return pt, pm, ct, cm, full, fmask


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()  # 4 query heads over 2 key-value heads (GQA), rotary positions
    assert cfg.num_kv_heads < cfg.num_heads
    return cfg, jax.jit(lambda: tiny_base(cfg))(), jax.jit(lambda: _adapter(cfg))()


@pytest.mark.parametrize("g", [2, 4])
def test_values_and_gradients_equal_the_unshared_pass(tiny, g):
    cfg, base, adapter = tiny
    pt, pm, ct, cm, full, fmask = _batch(g)
    n = ct.shape[1]
    w = jnp.asarray(np.random.default_rng(1).normal(size=ct.shape), jnp.float32) * cm  # a weighted masked sum

    @jax.jit
    def both(tr, bs):
        shared = lambda tr, bs: jnp.sum(w * grouped_response_logprobs(cfg, tr, bs, pt, pm, ct, cm, group_size=g))
        unshared = lambda tr, bs: jnp.sum(w * response_logprobs(cfg, tr, bs, full, fmask, n))
        return {"shared": {"logp": grouped_response_logprobs(cfg, tr, bs, pt, pm, ct, cm, group_size=g),
                           "logits": grouped_response_logits(cfg, tr, bs, pt, pm, ct, cm, group_size=g),
                           "hidden": grouped_hidden(cfg, tr, bs, pt, pm, ct, cm, group_size=g),
                           "grad": jax.value_and_grad(shared, argnums=(0, 1))(tr, bs)},
                "unshared": {"logp": response_logprobs(cfg, tr, bs, full, fmask, n),
                             "logits": response_logits(cfg, tr, bs, full, fmask, n),
                             "hidden": hidden_states(cfg, tr, bs, full, fmask)[:, pt.shape[1] - 1:],
                             "grad": jax.value_and_grad(unshared, argnums=(0, 1))(tr, bs)}}

    out = both(adapter, base)
    s, u = out["shared"], out["unshared"]
    real = cm > 0
    np.testing.assert_allclose(s["logp"][real], u["logp"][real], atol=ATOL)
    np.testing.assert_allclose(s["logits"][real], u["logits"][real], atol=ATOL)
    # hidden states at the prompt's last token and at every real completion token
    seen = np.concatenate([np.ones_like(cm[:, :1]), cm], 1) > 0
    np.testing.assert_allclose(s["hidden"][seen], u["hidden"][seen], atol=ATOL)
    (v1, (ga1, gb1)), (v2, (ga2, gb2)) = s["grad"], u["grad"]
    np.testing.assert_allclose(v1, v2, atol=ATOL)
    assert_trees_close(ga1, ga2, "adapter")
    assert_trees_close(gb1, gb2, "base")


def test_full_tree_base_alone_and_gpt2(tiny):
    """A full parameter tree, the base alone (the reference model), GPT-2's learned positions."""
    cfg, base, adapter = tiny
    pt, pm, ct, cm, full, fmask = _batch(2)
    n, real = ct.shape[1], cm > 0
    gpt2 = ModelConfig(arch="gpt2", vocab_size=20, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=32,
                       pad_token_id=0)
    gbase = jax.jit(Transformer(gpt2).init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    cases = {"full tree": (cfg, jax.jit(lambda: tiny_base(cfg, seed=3))(), base), "base alone": (cfg, None, base),
             "gpt2 + LoRA": (gpt2, jax.jit(lambda: _adapter(gpt2))(), gbase)}
    for name, (mc, tr, bs) in cases.items():
        f = jax.jit(lambda t, b: (grouped_response_logprobs(mc, t, b, pt, pm, ct, cm, group_size=2),
                                  response_logprobs(mc, t, b, full, fmask, n)))
        shared, unshared = f(tr, bs)
        np.testing.assert_allclose(shared[real], unshared[real], atol=ATOL, err_msg=name)


def test_bad_group_layout_is_one_clear_error(tiny):
    cfg, base, adapter = tiny
    pt, pm, ct, cm, _, _ = _batch(2)
    with pytest.raises(ValueError, match="not 3 prompts x group_size 4"):
        grouped_hidden(cfg, adapter, base, pt, pm, ct, cm, group_size=4)


def test_split_shared_prefix_by_hand():
    # group 0: [1 5 6 7] and [1 5 6 8 9] share [1 5 6]; group 1: [1 4] is a prefix of [1 4 2], and
    # its third slot is absent (all padding): the prompt is [1 4], completions [], [2], absent
    ids = np.array([[[0, 1, 5, 6, 7], [1, 5, 6, 8, 9], [0, 0, 0, 0, 0]],
                    [[0, 0, 0, 1, 4], [0, 0, 1, 4, 2], [0, 0, 0, 0, 0]]])
    out = split_shared_prefix(ids, (np.arange(5) >= np.array([[1, 0, 5], [3, 2, 5]])[..., None]).astype(int), pad_id=0)
    np.testing.assert_array_equal(out["prompt_ids"], [[1, 5, 6], [0, 1, 4]])
    np.testing.assert_array_equal(out["prompt_mask"], [[1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(out["input_ids"], [[[7, 0], [8, 9], [0, 0]], [[0, 0], [2, 0], [0, 0]]])
    np.testing.assert_array_equal(out["attention_mask"], [[[1, 0], [1, 1], [0, 0]], [[0, 0], [1, 0], [0, 0]]])
    # rows cut per side: prompt kept right-aligned, completions left-aligned
    arrays = layout_groups([[1], [2, 3]], [[[4], [5]], [[6], [7]]], pad_id=0, prompt_width=8, completion_width=8)
    rows = grouped_rows(dict(arrays, margin=np.zeros(2)), [1, 0], pad_multiple=2)
    assert rows["prompt_ids"].tolist() == [[2, 3], [0, 1]] and rows["input_ids"].tolist() == [[[6, 0], [7, 0]],
                                                                                              [[4, 0], [5, 0]]]


@pytest.mark.parametrize("loss", ["pairwise", "ranking"])
def test_reward_scores_loss_and_gradients_equal_the_whole_sequence_batch(tiny, loss):
    """The reward step's two batch layouts (prompt once; whole sequences) give the same loss,
    metrics and gradients; the ranking batch has an absent (flagged) slot."""
    cfg, base, adapter = tiny
    k = 2 if loss == "pairwise" else 3
    pt, pm, ct, cm, full, fmask = _batch(k)
    b = pt.shape[0]
    if loss == "ranking":
        cm[-1] = 0  # the last completion of the last prompt: flagged, all padding
        fmask[-1] = 0
    rm = RewardModel(adapter, {"kernel": jax.random.normal(jax.random.PRNGKey(5), (cfg.hidden_size,)),
                               "bias": jnp.float32(0.3)})
    extra = ({"margin": np.zeros(b, np.float32)} if loss == "pairwise" else
             {"ranks": np.tile([1, 2, 3], (b, 1)), "valid": np.array([[1, 1, 1]] * (b - 1) + [[1, 1, 0]], bool)})
    shared = dict(prompt_ids=pt, prompt_mask=pm, input_ids=ct.reshape(b, k, -1), attention_mask=cm.reshape(b, k, -1),
                  **extra)
    whole = dict(input_ids=full.reshape(b, k, -1), attention_mask=fmask.reshape(b, k, -1), **extra)
    config = RewardConfig(loss=loss)

    @jax.jit
    def run(r, batch):
        loss_and_metrics, grads = jax.value_and_grad(lambda r: reward_loss(cfg, config, r, base, batch),
                                                     has_aux=True)(r)
        return preference_scores(cfg, r, base, batch), loss_and_metrics, grads

    s1, (l1, m1), g1 = run(rm, shared)
    s2, (l2, m2), g2 = run(rm, whole)
    valid = np.ones((b, k), bool) if loss == "pairwise" else extra["valid"]
    np.testing.assert_allclose(s1[valid], s2[valid], atol=ATOL)
    np.testing.assert_allclose(l1, l2, atol=ATOL)
    for key in m2:
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-6, atol=ATOL, err_msg=key)  # center_loss ~190
    assert_trees_close(g1.model, g2.model, "reward adapter")
    assert_trees_close(g1.head["kernel"], g2.head["kernel"], "score head")  # (the head's bias: no gradient in BT)
