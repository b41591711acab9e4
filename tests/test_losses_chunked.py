"""Chunked vocabulary functions (hidden states + LM head, over sequence chunks) against the
array-only functions on the full logits: values and gradients (w.r.t. the hidden states and the
head) within 1e-5, tied and untied heads, a length that is not a multiple of the chunk; jit equals
eager; a fully masked loss is finite; the compiled gradient holds no [B, T, V] float32 array."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import (chunked_entropy, chunked_exact_kl, chunked_logprobs_and_entropy, chunked_nll,
                             chunked_token_logprobs, entropy_from_logits, exact_kl_from_logits, masked_mean,
                             token_logprobs)

B, T, D, V = 3, 13, 8, 37
CHUNK = 4  # 13 = 3 chunks of 4 + 1 (padded)
TOL = 1e-5


def _inputs(tied, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    hidden = jax.random.normal(ks[0], (B, T, D))
    ref_hidden = hidden + 0.3 * jax.random.normal(ks[1], (B, T, D))
    weight = jax.random.normal(ks[2], (V, D) if tied else (D, V))
    targets = jax.random.randint(ks[3], (B, T), 0, V)
    mask = (jnp.arange(T)[None] >= jnp.array([[0], [4], [9]])).astype(jnp.int32)  # left padding
    return hidden, ref_hidden, weight, targets, mask


def _full_logits(hidden, weight, tied):  # the unchunked reference: every [B, T, V] logit at once
    return hidden @ (weight.T if tied else weight)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL)


def _check_value_and_grads(chunked_fn, reference_fn, args):
    """Values, and the gradients of a random projection of the output w.r.t. every argument."""
    out = chunked_fn(*args)
    _close(out, reference_fn(*args))
    proj = jax.random.normal(jax.random.PRNGKey(9), np.shape(out))
    argnums = tuple(range(len(args)))
    g_chunked = jax.grad(lambda *a: jnp.sum(chunked_fn(*a) * proj), argnums=argnums)(*args)
    g_ref = jax.grad(lambda *a: jnp.sum(reference_fn(*a) * proj), argnums=argnums)(*args)
    for gc, gr in zip(g_chunked, g_ref):
        assert float(jnp.max(jnp.abs(gr))) > 0
        _close(gc, gr)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_equal_the_full_logits(tied, temperature):
    hidden, _, weight, targets, _ = _inputs(tied)
    _check_value_and_grads(
        lambda h, w: chunked_token_logprobs(h, w, tied, targets, temperature=temperature, chunk_size=CHUNK),
        lambda h, w: token_logprobs(_full_logits(h, w, tied), targets, temperature=temperature), (hidden, weight))
    _check_value_and_grads(
        lambda h, w: chunked_entropy(h, w, tied, temperature=temperature, chunk_size=CHUNK),
        lambda h, w: entropy_from_logits(_full_logits(h, w, tied), temperature=temperature), (hidden, weight))
    logp, ent = chunked_logprobs_and_entropy(hidden, weight, tied, targets, temperature=temperature, chunk_size=CHUNK)
    _close(logp, chunked_token_logprobs(hidden, weight, tied, targets, temperature=temperature, chunk_size=CHUNK))
    _close(ent, entropy_from_logits(_full_logits(hidden, weight, tied), temperature=temperature))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_exact_kl_equals_the_full_logits(tied):
    hidden, ref_hidden, weight, _, _ = _inputs(tied)
    ref_weight = weight * 1.1
    _check_value_and_grads(
        lambda h, hr, w, wr: chunked_exact_kl(h, hr, w, tied, ref_weight=wr, temperature=0.9, chunk_size=CHUNK),
        lambda h, hr, w, wr: exact_kl_from_logits(_full_logits(h, w, tied), _full_logits(hr, wr, tied),
                                                  temperature=0.9),
        (hidden, ref_hidden, weight, ref_weight))
    shared = chunked_exact_kl(hidden, ref_hidden, weight, tied, chunk_size=CHUNK)  # ref_weight=None: the same head
    _close(shared, exact_kl_from_logits(_full_logits(hidden, weight, tied), _full_logits(ref_hidden, weight, tied)))
    same = chunked_exact_kl(hidden, hidden, weight, tied, chunk_size=CHUNK)
    assert float(jnp.max(jnp.abs(same))) < 1e-6  # KL(p || p) = 0


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_nll_equals_the_masked_mean_of_the_full_logprobs(tied):
    hidden, _, weight, targets, mask = _inputs(tied)
    chunked = lambda h, w: chunked_nll(h, w, tied, targets, mask, chunk_size=CHUNK)[0]
    reference = lambda h, w: -masked_mean(token_logprobs(_full_logits(h, w, tied), targets), mask)
    _check_value_and_grads(chunked, reference, (hidden, weight))
    loss, metrics = chunked_nll(hidden, weight, tied, targets, mask, chunk_size=CHUNK)
    assert int(metrics["tokens"]) == int(mask.sum()) == 13 + 9 + 4
    # chunk sizes 1, a divisor-free one, and the whole sequence give the same loss
    for c in (1, 5, T, 100):
        _close(chunked_nll(hidden, weight, tied, targets, mask, chunk_size=c)[0], loss)
    # jit == eager
    jitted = jax.jit(lambda h, w: chunked_nll(h, w, tied, targets, mask, chunk_size=CHUNK))(hidden, weight)
    _close(jitted[0], loss)


def test_fully_masked_nll_is_zero_with_finite_gradients():
    hidden, _, weight, targets, _ = _inputs(False)
    zero = jnp.zeros((B, T), jnp.int32)
    loss, grads = jax.value_and_grad(lambda h, w: chunked_nll(h, w, False, targets, zero, chunk_size=CHUNK)[0],
                                     argnums=(0, 1))(hidden, weight)
    assert float(loss) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(g))) and not bool(jnp.any(g)) for g in grads)


def test_bad_shapes_are_named():
    hidden, _, weight, targets, mask = _inputs(False)
    with pytest.raises(ValueError, match=r"head weight \(8, 37\) does not fit hidden .*want \[V, D\] \(tied\)"):
        chunked_token_logprobs(hidden, weight, True, targets)
    with pytest.raises(ValueError, match="hidden must be"):
        chunked_entropy(hidden[0], weight, False)
    with pytest.raises(ValueError, match="mask .* and targets .* must have the same shape"):
        chunked_nll(hidden, weight, False, targets, mask[:, :-1])


def test_the_compiled_gradient_never_holds_the_full_logits():
    """The HLO of the chunked loss's gradient has [B, C, V] float32 logits but no [B, T, V] array;
    the unchunked reference's has one."""
    b, t, d, v, c = 2, 64, 8, 50, 16
    hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    weight = jax.ShapeDtypeStruct((d, v), jnp.float32)
    targets = jnp.zeros((b, t), jnp.int32)
    mask = jnp.ones((b, t), jnp.int32)
    chunked = jax.jit(jax.grad(lambda h, w: chunked_nll(h, w, False, targets, mask, chunk_size=c)[0], argnums=(0, 1)))
    full = jax.jit(jax.grad(lambda h, w: -masked_mean(token_logprobs(h @ w, targets), mask), argnums=(0, 1)))
    hlo_chunked = chunked.lower(hidden, weight).compile().as_text()
    hlo_full = full.lower(hidden, weight).compile().as_text()
    assert f"f32[{b},{t},{v}]" in hlo_full
    assert f"f32[{b},{t},{v}]" not in hlo_chunked and f"f32[{b},{c},{v}]" in hlo_chunked
