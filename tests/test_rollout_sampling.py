"""Sampling rules and generation semantics on a tiny random model (no PyTorch): empirical
frequencies against the softmax, top-k / top-p exclusion, EOS handling, LoRA on/off, one
compilation per prompt shape, bucketing, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.rollout import (
    Sampler,
    SamplingConfig,
    bucket_length,
    bucket_prompts,
    bucket_sizes,
    categorical,
    generate,
    greedy,
    left_pad,
    make_rule,
    top_k_filter,
    top_p_filter,
)

V = 13
PAD = 0
CFG = ModelConfig(vocab_size=V, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                  max_position_embeddings=32, eos_token_id=1, pad_token_id=PAD)


@pytest.fixture(scope="module")
def tiny():
    """(model, forward, params, zero-B adapter). Random weights drawn with NumPy (no model.init
    compilation); std 0.6 makes the next-token distributions far from uniform."""
    model = Transformer(CFG, lora=LoraConfig(rank=2))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(0)

    def draw(path, s):
        name = path[-1].key
        if name in ("scale", "b"):  # norm scales 1, LoRA B = 0 (as init_lora)
            return jnp.full(s.shape, 1.0 if name == "scale" else 0.0, jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.6, s.shape), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return model, jax.jit(model.apply), variables["params"], variables["lora"]


def prompts(batch, seed=0):
    rng = np.random.default_rng(seed)
    return left_pad([rng.integers(2, V, size=int(n)).tolist() for n in rng.integers(1, 6, batch)],
                    pad_id=PAD, bucket=8)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_probs(logits, temperature=1.0, top_k=None, top_p=1.0):
    """NumPy reference of the filtered sampling distribution (temperature, top-k, top-p)."""
    p = softmax(np.asarray(logits, np.float64) / temperature)
    if top_k is not None:
        p = np.where(p >= np.sort(p)[-top_k], p, 0.0)
        p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        keep = np.zeros_like(p, bool)
        keep[order[before < top_p]] = True
        p = np.where(keep, p, 0.0) / p[keep].sum()
    return p


def test_sampled_frequencies_match_softmax(tiny):
    """One step of generation for 20,000 copies of one prompt: token frequencies vs the softmax of
    the model's logits (computed by a separate full forward pass)."""
    model, forward, params, _ = tiny
    n = 20_000
    tokens = np.tile(np.array([[0, 5, 7, 3]], np.int32), (n, 1))
    mask = np.tile(np.array([[0, 1, 1, 1]], np.int32), (n, 1))
    config = SamplingConfig(max_new_tokens=1, temperature=1.5, eos_ids=())
    r = Sampler(model, config)({"params": params}, tokens, mask, jax.random.PRNGKey(42))
    logits = forward({"params": params}, tokens[:1], attention_mask=mask[:1]).logits[0, -1]
    p = reference_probs(np.asarray(logits), temperature=1.5)
    freq = np.bincount(np.asarray(r.response_tokens[:, 0]), minlength=V) / n
    # Each frequency is a mean of n Bernoulli(p_v): std sqrt(p_v (1 - p_v) / n) <= 0.0035. A 5-sigma
    # band fails with probability < 6e-7 per token, so < 1e-5 over the 13 tokens for a correct
    # sampler (and the seed is fixed); a sampler off by 0.02 on any token fails.
    tol = 5 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert np.all(np.abs(freq - p) <= tol), (freq, p)
    assert p.max() > 2 / V and p.min() < 0.5 / V  # far from uniform, so the test has teeth


@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=3), dict(temperature=1.3, top_p=0.6),
                                dict(top_k=5, top_p=0.8)])
def test_filtered_rule_frequencies(kw):
    """The rule alone on fixed logits: frequencies match the renormalised filtered softmax and
    excluded tokens are never drawn (same 5-sigma tolerance as above)."""
    logits = jnp.asarray(np.random.default_rng(0).normal(0, 1.5, V), jnp.float32)
    config = SamplingConfig(max_new_tokens=1, **kw)
    n = 20_000
    draws = jax.jit(make_rule(config))(jnp.tile(logits, (n, 1)), jax.random.PRNGKey(0))
    freq = np.bincount(np.asarray(draws), minlength=V) / n
    p = reference_probs(np.asarray(logits), **kw)
    assert np.all(freq[p == 0] == 0)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12), (freq, p)


def test_categorical_large_vocab_with_excluded_tokens():
    """The blocked inverse-CDF draw on V = 1000 (blocks of 32, the last one padded) with 90% of the
    tokens at -inf: never an excluded token, frequencies within 5 sigma of the softmax; a single
    allowed token (top-k = 1) is always drawn."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 1000).astype(np.float32)
    allowed = rng.random(1000) < 0.1
    allowed[[0, 999]] = [False, True]  # the first token excluded, the last (padded block) allowed
    x = np.where(allowed, logits, -np.inf).astype(np.float32)
    n = 50_000
    draws = np.asarray(jax.jit(categorical)(jnp.tile(jnp.asarray(x), (n, 1)), jax.random.PRNGKey(3)))
    assert allowed[draws].all()
    p = softmax(np.where(allowed, logits, -np.inf))
    freq = np.bincount(draws, minlength=1000) / n
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
    one = np.where(np.arange(1000) == 637, 0.0, -np.inf).astype(np.float32)
    assert set(np.asarray(categorical(jnp.tile(jnp.asarray(one), (64, 1)), jax.random.PRNGKey(0))).tolist()) == {637}


def test_filters_by_hand():
    # logits log([0.5, 0.3, 0.15, 0.05]): top-2 keeps {0, 1}; top-p 0.8: mass before token 2 is
    # 0.8, not < 0.8, so {0, 1} again; top-p 0.81 adds token 2; top-p 0.4 keeps token 0 only.
    x = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda y: np.isfinite(np.asarray(y))[0].tolist()
    assert kept(top_k_filter(x, k=2)) == [True, True, False, False]
    assert kept(top_p_filter(x, p=0.8)) == [True, True, False, False]
    assert kept(top_p_filter(x, p=0.81)) == [True, True, True, False]
    assert kept(top_p_filter(x, p=0.4)) == [True, False, False, False]
    assert greedy(jnp.array([[1.0, 3.0, 3.0]])).tolist() == [1]  # first of ties, as torch


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.5, temperature=0.8)])
def test_generation_never_emits_excluded_tokens(tiny, kw):
    model, forward, params, _ = tiny
    pb = prompts(16)
    config = SamplingConfig(max_new_tokens=12, eos_ids=(), **kw)
    r = Sampler(model, config)({"params": params}, pb.tokens, pb.mask, jax.random.PRNGKey(3))
    logits = forward({"params": params}, r.tokens, attention_mask=r.attention_mask).logits
    p0 = r.prompt_length
    step_logits = np.asarray(logits[:, p0 - 1:-1])  # the logits each response token was drawn from
    resp = np.asarray(r.response_tokens)
    for b in range(resp.shape[0]):
        for t in range(resp.shape[1]):
            allowed = reference_probs(step_logits[b, t], **kw) > 0
            assert allowed[resp[b, t]], (b, t, kw)
    assert len(np.unique(resp)) > 3  # it did sample


def test_eos_rows_emit_pad_and_mask(tiny):
    model, forward, params, _ = tiny
    pb = prompts(32, seed=1)
    eos = (1, 4, 9)
    config = SamplingConfig(max_new_tokens=10, temperature=2.0, eos_ids=eos)
    r = Sampler(model, config)({"params": params}, pb.tokens, pb.mask, jax.random.PRNGKey(7))
    resp, rmask = np.asarray(r.response_tokens), np.asarray(r.response_mask)
    lengths, done = np.asarray(r.lengths), np.asarray(r.eos_reached)
    assert 0 < done.sum() < len(done)  # some rows stopped early, some ran out of tokens
    for b in range(resp.shape[0]):
        n = lengths[b]
        assert rmask[b].tolist() == [1] * n + [0] * (10 - n)
        assert np.all(resp[b, n:] == PAD) and np.all(np.asarray(r.logprobs)[b, n:] == 0)
        is_eos = np.isin(resp[b, :n], eos)
        assert not is_eos[:-1].any()  # no EOS before the last real token
        assert done[b] == is_eos[-1] and (done[b] or n == 10)
    np.testing.assert_array_equal(np.asarray(r.attention_mask), np.concatenate([pb.mask, rmask], 1))
    np.testing.assert_array_equal(np.asarray(r.tokens[:, :r.prompt_length]), pb.tokens)


def test_lora_zero_b_equals_base_nonzero_b_differs(tiny):
    model, _, params, lora = tiny  # init_lora-style adapter: B = 0
    assert all(float(jnp.abs(b).max()) == 0 for b in jax.tree_util.tree_leaves(lora)[1::2])
    pb = prompts(8, seed=2)
    sampler = Sampler(model, SamplingConfig(max_new_tokens=8, eos_ids=()))
    key = jax.random.PRNGKey(11)
    base = sampler({"params": params}, pb.tokens, pb.mask, key)
    zero = sampler({"params": params, "lora": lora}, pb.tokens, pb.mask, key)
    np.testing.assert_array_equal(np.asarray(zero.tokens), np.asarray(base.tokens))
    np.testing.assert_array_equal(np.asarray(zero.logprobs), np.asarray(base.logprobs))
    rng = np.random.default_rng(1)
    trained = jax.tree_util.tree_map_with_path(  # B nonzero, as after some training
        lambda path, x: jnp.asarray(rng.normal(0, 1, x.shape), jnp.float32) if path[-1].key == "b" else x,
        lora)
    other = sampler({"params": params, "lora": trained}, pb.tokens, pb.mask, key)
    assert np.mean(np.asarray(other.tokens) != np.asarray(base.tokens)) > 0.1
    assert sampler.trace_count == 2  # base alone and base + adapter: two variable structures


def test_compiles_once_per_shape_and_bucket(tiny):
    model, forward, params, _ = tiny
    sampler = Sampler(model, SamplingConfig(max_new_tokens=4, greedy=True))
    rng = np.random.default_rng(0)
    data = [rng.integers(2, V, size=int(n)).tolist() for n in rng.integers(1, 17, 48)]
    buckets = bucket_prompts(data, pad_id=PAD, bucket=8)
    assert bucket_sizes(buckets) == {8: sum(len(q) <= 8 for q in data), 16: sum(len(q) > 8 for q in data)}
    for p, pb in buckets.items():  # batches of 4 from each bucket, each with other prompts
        for start in range(0, len(pb.indices) - 3, 4):
            r = sampler({"params": params}, pb.tokens[start:start + 4], pb.mask[start:start + 4],
                        jax.random.PRNGKey(start))
            assert r.tokens.shape == (4, p + 4)
    assert sampler.trace_count == 2 and sampler.cache_size() == 2  # one per bucket
    for i, b in enumerate(pb.indices):  # indices point back into the data; left padded
        assert pb.tokens[i, 16 - len(data[b]):].tolist() == data[b] and pb.mask[i].sum() == len(data[b])


def test_bucket_length():
    assert [bucket_length(n, bucket=16) for n in (1, 16, 17)] == [16, 16, 32]
    assert [bucket_length(n, bucket="pow2") for n in (1, 3, 8, 9)] == [1, 4, 8, 16]
    assert bucket_length(27, bucket=16, max_length=28) == 28
    with pytest.raises(ValueError, match="longer than max_length=20"):
        bucket_length(21, max_length=20)
    pb = left_pad([[5, 6], [7]], pad_id=PAD, bucket=4)
    assert pb.tokens.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7]] and pb.lengths.tolist() == [2, 1]


def test_errors(tiny):
    model, forward, params, _ = tiny
    with pytest.raises(ValueError, match=r"prompt length 24 \+ max_new_tokens 10 = 34 exceeds .*= 32"):
        generate({"params": params}, jnp.ones((2, 24), jnp.int32), jnp.ones((2, 24), jnp.int32),
                 jax.random.PRNGKey(0), model=model, config=SamplingConfig(max_new_tokens=10))
    no_pad = Transformer(CFG.replace(pad_token_id=None))
    with pytest.raises(ValueError, match="padding token id"):
        Sampler(no_pad, SamplingConfig(max_new_tokens=4))
    Sampler(no_pad, SamplingConfig(max_new_tokens=4, pad_id=1))  # an explicit pad id is enough
    with pytest.raises(ValueError, match="LEFT padded"):
        Sampler(model, SamplingConfig(max_new_tokens=4))(
            {"params": params}, np.array([[5, 0]]), np.array([[1, 0]]), jax.random.PRNGKey(0))
    for bad in (dict(max_new_tokens=0), dict(max_new_tokens=4, temperature=0.0),
                dict(max_new_tokens=4, top_k=0), dict(max_new_tokens=4, top_p=0.0)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)
    assert SamplingConfig(max_new_tokens=1, eos_ids=[3, 4]).eos_ids == (3, 4)  # hashable
