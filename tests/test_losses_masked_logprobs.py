"""Masked reductions and log-prob helpers: hand-worked values, NumPy references, TRL 1.12, jit,
gradients (float64 finite differences), fully-masked and garbage-padded inputs.

Tests call the functions under ``jax.jit`` (one compile per test) because op-by-op eager dispatch
compiles every primitive separately and is several times slower on CPU; ``test_*_jit_equals_eager``
runs the same functions eagerly once.

TRL's functions are taken from the installed trl package's own source files and executed with
torch, rather than imported: importing ``trl.trainer.utils`` pulls in ``transformers`` and costs
several seconds, more than all the other checks here together.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses as L


from tests.loss_helpers import assert_trees_close as _assert_trees_close
from tests.loss_helpers import grads_x64 as _grads_x64


def _trl_functions(relpath: str, *names: str):
    """Top-level functions ``names`` of ``trl/<relpath>`` from the installed trl, verbatim."""
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("trl")  # locates the package without importing it
    missing = ("trl is not installed" if spec is None or spec.origin is None else
               None if importlib.metadata.version("trl") == "1.12.0" else "written against trl 1.12.0")
    if missing:  # CI installs trl==1.12.0 (make test): there a missing peer is a failure, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    path = pathlib.Path(spec.origin).parent / relpath
    defs = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert sorted(d.name for d in defs) == sorted(names), f"{names} not found in {path}"
    namespace = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)
    return torch, *(namespace[n] for n in names)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 5)).astype(np.float32)
M = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
LOGITS = (2 * RNG.normal(size=(2, 4, 7))).astype(np.float32)
TOKENS = RNG.integers(0, 7, size=(2, 4)).astype(np.int32)
TMASK = np.array([[1, 1, 1, 0], [0, 1, 1, 0]], np.int32)


def _masked_battery(x, m):
    """Every masked reduction of ``x`` [3, 5]."""
    return {
        "sum": L.masked_sum(x, m),
        "mean": L.masked_mean(x, m),
        "mean_rows": L.masked_mean(x, m, axis=1),
        "var": L.masked_var(x, m),
        "var_biased_rows": L.masked_var(x, m, axis=1, unbiased=False),
        "max_rows": L.masked_max(x, m, axis=1),
        "min": L.masked_min(x, m),
        "whiten": L.masked_whiten(x, m),
        "whiten_rows_keep_mean": L.masked_whiten(x, m, axis=1, unbiased=False, shift_mean=False),
        "token": L.masked_aggregate(x, m, aggregation="token"),
        "sequence": L.masked_aggregate(x, m, aggregation="sequence"),
    }


def _logprob_battery(z):
    """Every log-prob helper on logits ``z`` [2, 4, 7]."""
    lp = L.token_logprobs(z, TOKENS)
    return {
        "lp": lp,
        "lp_tau": L.token_logprobs(z, TOKENS, temperature=0.7),
        "ent": L.entropy_from_logits(z),
        "ent_tau": L.entropy_from_logits(z, temperature=0.7),
        "seq": L.sequence_logprobs(lp, TMASK),
        "seq_norm": L.sequence_logprobs(lp, TMASK, length_normalize=True),
    }


# ----------------------------------------------------------------------------- masked reductions


def test_masked_hand_example():
    @jax.jit
    def run():
        x, m = jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1, 1, 0, 1])
        agg_x, agg_m = jnp.array([[1.0, 3.0], [5.0, 100.0]]), jnp.array([[1, 1], [1, 0]])
        return {
            "sum": L.masked_sum(x, m),
            "mean": L.masked_mean(x, m),
            "var_biased": L.masked_var(x, m, unbiased=False),
            "var": L.masked_var(x, m),
            "max": L.masked_max(x, m),
            "min": L.masked_min(x, m),
            "whiten": L.masked_whiten(jnp.array([1.0, 3.0, 50.0]), jnp.array([1, 1, 0])),
            "whiten_keep_mean": L.masked_whiten(jnp.array([1.0, 3.0]), jnp.array([1, 1]), shift_mean=False),
            "token": L.masked_aggregate(agg_x, agg_m, aggregation="token"),
            "sequence": L.masked_aggregate(agg_x, agg_m, aggregation="sequence"),
            "sequence_empty_row": L.masked_aggregate(agg_x, jnp.array([[1, 1], [0, 0]]), aggregation="sequence"),
        }

    r = run()
    s2 = 1 / math.sqrt(2)
    expected = {
        "sum": 7.0,  # 1 + 2 + 4
        "mean": 7 / 3,  # 7 / 3
        # deviations from 7/3 are -4/3, -1/3, 5/3: squares sum to 42/9; /3 = 14/9 biased, /2 = 7/3 unbiased
        "var_biased": 14 / 9,
        "var": 7 / 3,
        "max": 4.0,  # max of {1, 2, 4}
        "min": 1.0,
        # [1, 3]: mean 2, unbiased var 2 -> (x - 2) / sqrt(2) = -/+ 0.70711; the masked 50 -> 0
        "whiten": [-s2, s2, 0.0],
        "whiten_keep_mean": [2 - s2, 2 + s2],  # shift_mean=False adds the mean 2 back
        "token": 3.0,  # (1 + 3 + 5) / 3
        "sequence": 3.5,  # mean(mean(1, 3), mean(5)) = mean(2, 5)
        "sequence_empty_row": 2.0,  # the empty row is left out: mean(2)
    }
    _assert_trees_close(r, {k: np.asarray(v, np.float32) for k, v in expected.items()}, rtol=1e-6)
    with pytest.raises(ValueError):
        L.masked_aggregate(X, M, aggregation="sum")


def test_masked_match_numpy():
    r = jax.jit(_masked_battery)(X, M)
    xm = np.ma.masked_array(X.astype(np.float64), mask=M == 0)
    mean_r, var_r = xm.mean(axis=1, keepdims=True), xm.var(axis=1, keepdims=True)
    seq_means = np.array([X[i][M[i] == 1].mean() for i in range(3)])
    expected = {
        "sum": xm.sum(),
        "mean": xm.mean(),
        "mean_rows": xm.mean(axis=1),
        "var": xm.var(ddof=1),
        "var_biased_rows": xm.var(axis=1),
        "max_rows": xm.max(axis=1),
        "min": xm.min(),
        "whiten": np.where(M, (X - xm.mean()) / np.sqrt(xm.var(ddof=1) + 1e-8), 0.0),
        "whiten_rows_keep_mean": np.where(M, (X - mean_r) / np.sqrt(var_r + 1e-8) + mean_r, 0.0),
        "token": xm.mean(),
        "sequence": seq_means.mean(),
    }
    # row 2 has a single token: its variance is 0, so it whitens to 0 (+ its mean)
    _assert_trees_close(r, {k: np.asarray(v) for k, v in expected.items()}, rtol=1e-4, atol=1e-5)


def test_masked_match_trl():
    torch, masked_mean, masked_var, masked_whiten = _trl_functions(
        "experimental/ppo/ppo_trainer.py", "masked_mean", "masked_var", "masked_whiten"
    )

    x = RNG.normal(size=(4, 6)).astype(np.float32)
    m = (RNG.random((4, 6)) < 0.7).astype(np.int32)
    m[:, 0] = 1

    @jax.jit
    def ours(x, m):
        return (
            L.masked_mean(x, m),
            L.masked_mean(x, m, axis=1),
            L.masked_var(x, m),
            L.masked_var(x, m, unbiased=False),
            L.masked_whiten(x, m),
            L.masked_whiten(x, m, shift_mean=False),
        )

    tx, tm = torch.tensor(x), torch.tensor(m).bool()
    theirs = (
        masked_mean(tx, tm),
        masked_mean(tx, tm, axis=1),
        masked_var(tx, tm),
        masked_var(tx, tm, unbiased=False),
        masked_whiten(tx, tm),
        masked_whiten(tx, tm, shift_mean=False),
    )
    mine = ours(x, m)
    for a, b in zip(mine[:4], theirs[:4]):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5)
    for a, b in zip(mine[4:], theirs[4:]):
        a, b = np.asarray(a), b.numpy()
        # TRL leaves the whitened padding in place; ours writes 0 there.
        np.testing.assert_allclose(a[m == 1], b[m == 1], rtol=1e-5, atol=1e-6)
        assert np.all(a[m == 0] == 0)


def test_masked_jit_equals_eager():
    _assert_trees_close(_masked_battery(X, M), jax.jit(_masked_battery)(X, M))


def test_masked_grads():
    # max/min are not differentiable at ties, fine for random inputs
    _grads_x64(lambda x: _masked_battery(x, M), X)


def test_masked_fully_masked_and_garbage():
    def total(x, m):
        return sum(jnp.sum(v) for v in _masked_battery(x, m).values())

    value_and_grad = jax.jit(jax.value_and_grad(total))
    v, g = value_and_grad(X, np.zeros_like(M))
    assert float(v) == 0.0 and np.all(np.isfinite(g))
    # NaN / inf under the mask change nothing, neither values nor gradients
    junk = np.array([np.nan, np.inf, -np.inf], np.float32)[RNG.integers(0, 3, X.shape)]
    dirty = np.where(M == 1, X, junk)
    _assert_trees_close(value_and_grad(dirty, M), value_and_grad(X, M))


def test_masked_dtypes():
    shapes = jax.eval_shape(_masked_battery, jnp.asarray(X, jnp.bfloat16), M)
    assert all(v.dtype == jnp.float32 for v in shapes.values())

    @jax.jit
    def f(x, m):
        return L.masked_mean(x, m), L.masked_whiten(x, m)

    # bool, int and float masks agree
    _assert_trees_close(f(X, M.astype(bool)), f(X, M))
    _assert_trees_close(f(X, M.astype(np.float32)), f(X, M))


# ----------------------------------------------------------------------------- log-probs


def test_logprobs_hand_example():
    @jax.jit
    def run():
        logits = jnp.array([[[0.0, math.log(3.0)]]])  # softmax = [1/4, 3/4]
        return {
            "lp": L.token_logprobs(logits, jnp.array([[1]]))[0, 0],
            "lp_tau2": L.token_logprobs(logits, jnp.array([[1]]), temperature=2.0)[0, 0],
            "ent": L.entropy_from_logits(logits)[0, 0],
            "ent_uniform4": L.entropy_from_logits(jnp.zeros((1, 1, 4)))[0, 0],
            "seq": L.sequence_logprobs(jnp.array([[-1.0, -2.0, -3.0]]), jnp.array([[1, 1, 0]]))[0],
            "seq_norm": L.sequence_logprobs(
                jnp.array([[-1.0, -2.0, -3.0]]), jnp.array([[1, 1, 0]]), length_normalize=True
            )[0],
        }

    r3 = math.sqrt(3)
    expected = {
        "lp": math.log(0.75),  # log p(token 1) = log 3/4 = -0.28768
        "lp_tau2": math.log(r3 / (1 + r3)),  # logits / 2 = [0, ln3 / 2] -> p1 = sqrt3 / (1 + sqrt3)
        "ent": -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)),  # 0.56234
        "ent_uniform4": math.log(4),  # 1.38629
        "seq": -3.0,  # -1 + -2, the -3 is masked
        "seq_norm": -1.5,  # (-1 + -2) / 2
    }
    _assert_trees_close(run(), {k: np.float32(v) for k, v in expected.items()})


def test_logprobs_match_numpy():
    r = jax.jit(_logprob_battery)(LOGITS)
    lsm, lsm_tau = _np_log_softmax(LOGITS), _np_log_softmax(LOGITS / 0.7)
    lp = np.take_along_axis(lsm, TOKENS[..., None], -1)[..., 0]
    expected = {
        "lp": lp,
        "lp_tau": np.take_along_axis(lsm_tau, TOKENS[..., None], -1)[..., 0],
        "ent": -(np.exp(lsm) * lsm).sum(-1),
        "ent_tau": -(np.exp(lsm_tau) * lsm_tau).sum(-1),
        "seq": (lp * TMASK).sum(1),
        "seq_norm": (lp * TMASK).sum(1) / TMASK.sum(1),
    }
    _assert_trees_close(r, expected, rtol=1e-5, atol=1e-5)


def test_logprobs_match_trl():
    torch, selective_log_softmax, entropy_from_logits = _trl_functions(
        "trainer/utils.py", "selective_log_softmax", "entropy_from_logits"
    )

    r = jax.jit(_logprob_battery)(LOGITS)
    tl, tt = torch.tensor(LOGITS), torch.tensor(TOKENS, dtype=torch.long)
    np.testing.assert_allclose(r["lp"], selective_log_softmax(tl, tt).numpy(), rtol=1e-5, atol=1e-6)
    # TRL scales the logits by the temperature before calling selective_log_softmax
    np.testing.assert_allclose(r["lp_tau"], selective_log_softmax(tl / 0.7, tt).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["ent"], entropy_from_logits(tl).numpy(), rtol=1e-5, atol=1e-6)
    # what TRL's DPO trainer calls the sequence log-prob: per-token log-probs zeroed off the mask, summed
    seq = selective_log_softmax(tl, tt)
    seq[torch.tensor(TMASK) == 0] = 0.0
    np.testing.assert_allclose(r["seq"], seq.sum(1).numpy(), rtol=1e-5, atol=1e-6)


def test_logprobs_jit_equals_eager():
    _assert_trees_close(_logprob_battery(LOGITS), jax.jit(_logprob_battery)(LOGITS))


def test_logprobs_grads_and_traced_temperature():
    _grads_x64(_logprob_battery, LOGITS)
    f = jax.jit(lambda z, t: L.token_logprobs(z, TOKENS, temperature=t))
    np.testing.assert_allclose(f(LOGITS, 0.7), jax.jit(_logprob_battery)(LOGITS)["lp_tau"], rtol=1e-6)


def test_logprobs_float32_whatever_dtype():
    lb = jnp.asarray(LOGITS, jnp.bfloat16)
    shapes = jax.eval_shape(_logprob_battery, lb)
    assert all(v.dtype == jnp.float32 for v in shapes.values())
    # computed from the bf16 values upcast to f32, not in bf16
    f = jax.jit(lambda z: L.token_logprobs(z, TOKENS))
    np.testing.assert_array_equal(f(lb), f(lb.astype(jnp.float32)))


def test_logprobs_out_of_range_padding_and_fully_masked():
    tokens = np.array(TOKENS)
    tokens[:, -1] = -100  # a common "ignore" label id
    assert np.all(np.isfinite(jax.jit(L.token_logprobs)(LOGITS, tokens)))

    def f(z):
        return jnp.sum(L.sequence_logprobs(L.token_logprobs(z, TOKENS), jnp.zeros((2, 4))))

    v, g = jax.jit(jax.value_and_grad(f))(LOGITS)
    assert float(v) == 0.0 and np.all(np.isfinite(g)) and np.all(g == 0)
