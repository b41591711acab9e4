"""The scale options of the model give the same function: the layer scan unrolled or not, every
remat setting (values and gradients), the attention kernels (XLA, query-chunked) on left-padded,
packed and GQA batches, cached decoding through the chunked path; mixed precision keeps float32
master weights and gradients. (Parity with transformers under these options: test_model_parity.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig, init_lora
from rlhf_jax.model import AttentionMask, ModelConfig, Transformer, attend, init_cache

LLAMA = ModelConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=48,
                    qkv_bias=True, max_position_embeddings=64)
GPT2 = ModelConfig(arch="gpt2", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=64, activation="gelu_new", norm_eps=1e-5)


def _batch(t=11):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=(3, t)).astype(np.int32)
    mask = np.ones((3, t), np.int32)
    mask[1, :3] = 0
    mask[2, :7] = 0
    return jnp.asarray(tokens), jnp.asarray(mask)


def _setup(cfg, lcfg=LoraConfig(rank=2, alpha=4.0)):
    tokens, mask = _batch()
    base = Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]
    lora = init_lora(Transformer(cfg, lora=lcfg), jax.random.PRNGKey(1))
    lora = jax.tree_util.tree_map(lambda x: x + 0.05, lora)  # B != 0: the adapter matters
    return base, lora, tokens, mask


def _loss_and_grads(cfg, base, lora, tokens, mask, lcfg=LoraConfig(rank=2, alpha=4.0)):
    model = Transformer(cfg, lora=lcfg)

    def loss(lora):
        logits = model.apply({"params": base, "lora": lora}, tokens, attention_mask=mask).logits
        return jnp.sum(jnp.where(mask[..., None] > 0, jax.nn.log_softmax(logits), 0.0)) / 100

    return jax.jit(jax.value_and_grad(loss))(lora)


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_scan_unrolled_remat_and_chunked_attention_give_the_same_values_and_gradients(cfg):
    base, lora, tokens, mask = _setup(cfg)
    ref_loss, ref_grads = _loss_and_grads(cfg, base, lora, tokens, mask)
    variants = [dict(remat="block", attention="chunked", attention_chunk=4)]
    if cfg.arch == "llama":
        variants += [dict(scan_layers=False, remat="dots_saveable"), dict(attention="xla", attention_chunk=3)]
    for v in variants:
        loss, grads = _loss_and_grads(cfg.replace(**v), base, lora, tokens, mask)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6, err_msg=str(v))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6,
                                                                       rtol=1e-5, err_msg=str(v)), grads, ref_grads)


def test_attention_kernels_agree_with_a_numpy_reference():
    """Left padding, GQA (4 query heads over 2 kv heads), packed segments; chunked with a chunk
    that does not divide T. Reference: softmax over the visible keys in float64."""
    rng = np.random.default_rng(1)
    b, t, n, k, h = 2, 9, 4, 2, 5
    q, kk, v = (rng.standard_normal(s).astype(np.float32) for s in [(b, t, n, h), (b, t, k, h), (b, t, k, h)])
    key_mask = np.ones((b, t), bool)
    key_mask[0, :2] = False
    seg = np.array([[0, 0, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 2, 2, 2, 3, 3]])
    mask = AttentionMask(jnp.arange(t), jnp.arange(t), jnp.asarray(key_mask), jnp.asarray(seg), jnp.asarray(seg))
    want = np.zeros((b, t, n, h))
    for bi in range(b):
        for ti in range(t):
            vis = [s for s in range(t) if s <= ti and key_mask[bi, s] and seg[bi, s] == seg[bi, ti]] or [ti]
            for ni in range(n):
                ki = ni // (n // k)
                sc = np.array([q[bi, ti, ni] @ kk[bi, s, ki] for s in vis], np.float64) / np.sqrt(h)
                p = np.exp(sc - sc.max())
                want[bi, ti, ni] = (p / p.sum()) @ v[bi, vis, ki]
    for impl, chunk in (("xla", 512), ("chunked", 4), ("chunked", 2), ("auto", 4)):
        got = attend(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask, implementation=impl, chunk=chunk)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, err_msg=f"{impl} {chunk}")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        attend(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask, implementation="flash")


def test_packed_rows_through_the_chunked_path():
    cfg = LLAMA.replace(attention="chunked", attention_chunk=4)
    params = Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(2)
    examples = [rng.integers(1, 50, size=n).astype(np.int32) for n in (5, 6)]
    tokens = np.zeros((1, 13), np.int32)
    seg = np.zeros((1, 13), np.int32)
    tokens[0, :5], seg[0, :5] = examples[0], 1
    tokens[0, 5:11], seg[0, 5:11] = examples[1], 2
    apply = jax.jit(lambda t, s: Transformer(cfg).apply({"params": params}, t, segment_ids=s).logits[0])
    packed = apply(jnp.asarray(tokens), jnp.asarray(seg))
    for at, ex in ((0, examples[0]), (5, examples[1])):
        alone = apply(jnp.asarray(ex)[None], jnp.ones((1, len(ex)), jnp.int32))
        np.testing.assert_allclose(packed[at:at + len(ex)], alone, atol=1e-5)


def test_cached_decoding_with_scan_and_unrolled_layers():
    base, lora, tokens, mask = _setup(LLAMA)
    full = Transformer(LLAMA).apply({"params": base}, tokens, attention_mask=mask).logits
    for cfg in (LLAMA, LLAMA.replace(scan_layers=False), LLAMA.replace(attention="chunked", attention_chunk=2)):
        model = Transformer(cfg)
        step = jax.jit(lambda c, t, m: model.apply({"params": base}, t, attention_mask=m, cache=c))
        cache = init_cache(cfg, 3, 12)
        assert cache.keys.shape == (3, 3, 12, 2, 8)  # [L, B, S, K, H]
        out = step(cache, tokens[:, :6], mask[:, :6])
        pieces = [out.logits]
        for i in range(6, 11):
            out = step(out.cache, tokens[:, i:i + 1], mask[:, i:i + 1])
            pieces.append(out.logits)
        got = np.concatenate([np.asarray(p) for p in pieces], axis=1)
        real = np.asarray(mask).astype(bool)
        np.testing.assert_allclose(got[real], np.asarray(full)[real], atol=1e-5)


def test_mixed_precision_keeps_float32_master_weights_and_gradients():
    """compute_dtype=bfloat16 over float32 parameters: bf16 activations, float32 logits, float32
    gradients of the float32 weights; close to the all-float32 model."""
    cfg = LLAMA.replace(compute_dtype="bfloat16")
    base, _, tokens, mask = _setup(LLAMA)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(base))
    assert Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]["lm_head"].dtype == jnp.float32

    def loss(params, cfg):
        logits = Transformer(cfg).apply({"params": params}, tokens, attention_mask=mask).logits
        assert logits.dtype == jnp.float32
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    l16, g16 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(base, cfg)
    l32, g32 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(base, LLAMA)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(g16))
    assert abs(float(l16) - float(l32)) < 2e-2 * abs(float(l32)) and float(l16) != float(l32)
    hidden = jax.eval_shape(lambda p: Transformer(cfg).apply({"params": p}, tokens, return_hidden=True,
                                                               compute_logits=False).hidden, base)
    assert hidden.dtype == jnp.bfloat16
    assert init_cache(cfg, 1, 4).keys.dtype == jnp.bfloat16


def test_config_validation():
    for bad, match in ((dict(remat="sometimes"), "remat"), (dict(attention="flash"), "attention"),
                       (dict(compute_dtype="int8"), "compute_dtype"), (dict(attention_chunk=0), "attention_chunk")):
        with pytest.raises(ValueError, match=match):
            LLAMA.replace(**bad)
    assert LLAMA.replace(remat="block").remat_policy is jax.checkpoint_policies.nothing_saveable
    assert LLAMA.remat_policy is None
