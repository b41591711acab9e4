"""PPO policy / value / entropy losses: hand-worked values (and gradients), a NumPy transcription
of TRL 1.12's inline PPO math, jit, float64 gradient checks, fully masked and garbage padding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses as L


from tests.loss_helpers import assert_trees_close as _assert_trees_close
from tests.loss_helpers import grads_x64 as _grads_x64


RNG = np.random.default_rng(2)
B, T = 3, 5
MASK = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 0, 1, 1]], np.int32)
OLD_LOGP = (-RNG.random((B, T)) * 3).astype(np.float32)
# log-ratios well away from the clip edges (ratios 0.8, 1.2, 1.28) and the dual clip (2.5), so that
# finite differences never straddle a kink
LOG_RATIO = RNG.choice([-1.0, -0.5, -0.1, 0.05, 0.1, 0.5, 1.2], size=(B, T))
ADV = RNG.normal(size=(B, T)).astype(np.float32)
LOG_RATIO[0, 0], ADV[0, 0] = 1.2, -0.7  # ratio 3.32 > 2.5 with A < 0: the dual clip is active
LOGP = (OLD_LOGP + LOG_RATIO).astype(np.float32)
OLD_VALUES = RNG.normal(size=(B, T)).astype(np.float32)
VALUES = (OLD_VALUES + RNG.choice([-0.5, -0.1, 0.1, 0.35], size=(B, T))).astype(np.float32)
RETURNS = RNG.normal(size=(B, T)).astype(np.float32)
ENTROPY = RNG.random((B, T)).astype(np.float32) * 2


def _battery(logp, values, entropy):
    return {
        "plain": L.ppo_policy_loss(logp, OLD_LOGP, ADV, MASK),
        "dual_high_seq": L.ppo_policy_loss(
            logp, OLD_LOGP, ADV, MASK, clip_eps=0.2, clip_eps_high=0.28, dual_clip=2.5, aggregation="sequence"
        ),
        "value": L.ppo_value_loss(values, OLD_VALUES, RETURNS, MASK),
        "value_unclipped_seq": L.ppo_value_loss(values, OLD_VALUES, RETURNS, MASK, clip_eps=None, aggregation="sequence"),
        "entropy": L.entropy_loss(entropy, MASK),
    }


def _losses_only(*args):  # metrics carry no gradient (stop_gradient), so leave them out
    return {k: v[0] for k, v in _battery(*args).items()}


# ----------------------------------------------------------------------------- NumPy reference


def _np_mean(x, m):
    return x[m == 1].mean()


def _np_seq_mean(x, m):
    return np.mean([x[i][m[i] == 1].mean() for i in range(len(x)) if m[i].any()])


def _np_policy(logp, old, adv, m, eps_low, eps_high, dual, agg):
    # TRL 1.12 trl/experimental/ppo/ppo_trainer.py (pg_losses, pg_losses2, pg_loss_max, pg_clipfrac)
    logprobs_diff = logp.astype(np.float64) - old
    ratio = np.exp(logprobs_diff)
    pg_losses = -adv * ratio
    pg_losses2 = -adv * np.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg_loss_max = np.maximum(pg_losses, pg_losses2)
    dual_active = np.zeros_like(m, bool)
    if dual is not None:  # Ye et al. 2020: for A < 0 cap the loss at -c A
        dual_active = (adv < 0) & (pg_loss_max > -dual * adv)
        pg_loss_max = np.where(adv < 0, np.minimum(pg_loss_max, -dual * adv), pg_loss_max)
    loss = _np_mean(pg_loss_max, m) if agg == "token" else _np_seq_mean(pg_loss_max, m)
    return loss, {
        "policy_loss": loss,
        "clip_frac": _np_mean((pg_losses2 > pg_losses).astype(float), m),
        "dual_clip_frac": _np_mean(dual_active.astype(float), m),
        "approx_kl": _np_mean(ratio - 1 - logprobs_diff, m),
        "ratio_mean": _np_mean(ratio, m),
        "ratio_min": ratio[m == 1].min(),
        "ratio_max": ratio[m == 1].max(),
        "advantage_mean": _np_mean(adv, m),
    }


def _np_value(v, old, ret, m, eps, agg):
    # TRL 1.12 (vpredclipped, vf_losses1, vf_losses2, vf_loss_max, vf_loss = 0.5 * masked_mean, vf_clipfrac)
    v = v.astype(np.float64)
    vf_losses1 = np.square(v - ret)
    vpredclipped = v if eps is None else np.clip(v, old - eps, old + eps)
    vf_losses2 = np.square(vpredclipped - ret)
    vf_loss_max = np.maximum(vf_losses1, vf_losses2)
    loss = 0.5 * (_np_mean(vf_loss_max, m) if agg == "token" else _np_seq_mean(vf_loss_max, m))
    return loss, {
        "value_loss": loss,
        "value_clip_frac": _np_mean((vf_losses2 > vf_losses1).astype(float), m),
        "value_error": _np_mean(vf_losses1, m),
        "value_mean": _np_mean(v, m),
        "return_mean": _np_mean(ret, m),
    }


# ----------------------------------------------------------------------------- tests


def test_ppo_policy_hand_example():
    logp = jnp.log(jnp.array([[1.5, 0.5, 1.5, 1.0]]))  # old log-probs 0, so these are the ratios
    adv = jnp.array([[1.0, -1.0, -1.0, 1.0]])
    m = jnp.ones((1, 4))

    @jax.jit
    def run(logp):
        loss_and_metrics, grad = jax.value_and_grad(
            lambda lp: L.ppo_policy_loss(lp, jnp.zeros_like(lp), adv, m, clip_eps=0.2), has_aux=True
        )(logp)
        dual = L.ppo_policy_loss(jnp.log(jnp.array([[5.0]])), jnp.zeros((1, 1)), -jnp.ones((1, 1)), jnp.ones((1, 1)), dual_clip=3.0)
        seq = [
            L.ppo_policy_loss(jnp.log(jnp.array([[1.5, 0.5], [1.5, 7.0]])), jnp.zeros((2, 2)),
                              jnp.array([[1.0, -1.0], [-1.0, 9.0]]), jnp.array([[1, 1], [1, 0]]), aggregation=a)[0]
            for a in ("token", "sequence")
        ]
        return loss_and_metrics, grad, dual, seq

    (loss, metrics), grad, (dual_loss, dual_metrics), (tok, seq) = run(logp)
    # per token, eps = 0.2:
    #   A= 1, r=1.5: max(-1.5, -1.2) = -1.2  (clipped: pessimistic bound active, gradient 0)
    #   A=-1, r=0.5: max( 0.5,  0.8) =  0.8  (clipped, gradient 0)
    #   A=-1, r=1.5: max( 1.5,  1.2) =  1.5  (unclipped: d/dlogp (-A r) = r = 1.5, / 4 tokens)
    #   A= 1, r=1.0: max(-1.0, -1.0) = -1.0  (unclipped: -A r = -1, / 4)
    # loss = (-1.2 + 0.8 + 1.5 - 1.0) / 4 = 0.025
    assert float(loss) == pytest.approx(0.025, abs=1e-6)
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.375, -0.25]], atol=1e-6)
    approx_kl = (0.5 - math.log(1.5)) * 2 + (-0.5 - math.log(0.5))  # sum of r - 1 - log r
    expected = {
        "policy_loss": 0.025,
        "clip_frac": 0.5,
        "dual_clip_frac": 0.0,
        "approx_kl": approx_kl / 4,  # (0.094535 * 2 + 0.193147) / 4 = 0.095554
        "ratio_mean": 1.125,  # (1.5 + 0.5 + 1.5 + 1) / 4
        "ratio_min": 0.5,
        "ratio_max": 1.5,
        "advantage_mean": 0.0,
    }
    _assert_trees_close(metrics, jax.tree.map(np.float32, expected), rtol=1e-5)
    # dual clip c = 3: A = -1, r = 5: max(5, 1.2) = 5, capped at -c A = 3
    assert float(dual_loss) == pytest.approx(3.0) and float(dual_metrics["dual_clip_frac"]) == 1.0
    # rows [-1.2, 0.8] and [1.5, (masked)]: token mean (-1.2 + 0.8 + 1.5) / 3 = 0.36667;
    # sequence mean of (-0.2, 1.5) = 0.65
    assert float(tok) == pytest.approx(1.1 / 3, abs=1e-6) and float(seq) == pytest.approx(0.65, abs=1e-6)
    with pytest.raises(ValueError):
        L.ppo_policy_loss(logp, logp, adv, m, dual_clip=0.5)


def test_ppo_value_and_entropy_hand_example():
    @jax.jit
    def run():
        v, old, ret = jnp.array([[1.0, 1.0, 5.0]]), jnp.array([[0.5, 0.9, 0.0]]), jnp.array([[2.0, 2.0, 0.0]])
        return L.ppo_value_loss(v, old, ret, jnp.array([[1, 1, 0]]), clip_eps=0.2), L.entropy_loss(
            jnp.array([[1.0, 2.0, 9.0]]), jnp.array([[1, 1, 0]])
        )

    value, entropy = run()
    # token 0: V=1, old 0.5, R=2: V_clip = 0.7; (1-2)^2 = 1 < (0.7-2)^2 = 1.69 -> 0.5 * 1.69 = 0.845 (clipped)
    # token 1: V=1, old 0.9, R=2: V_clip = 1.0; both 1 -> 0.5
    # token 2 masked. loss = (0.845 + 0.5) / 2 = 0.6725
    expected_value = (0.6725, {"value_loss": 0.6725, "value_clip_frac": 0.5, "value_error": 1.0,
                               "value_mean": 1.0, "return_mean": 2.0})
    _assert_trees_close(value, jax.tree.map(np.float32, expected_value), rtol=1e-6)
    # entropy bonus: -mean(1, 2) = -1.5
    _assert_trees_close(entropy, (np.float32(-1.5), {"entropy": np.float32(1.5)}))


def test_ppo_match_numpy_trl_transcription():
    r = jax.jit(_battery)(LOGP, VALUES, ENTROPY)
    expected = {
        "plain": _np_policy(LOGP, OLD_LOGP, ADV, MASK, 0.2, 0.2, None, "token"),
        "dual_high_seq": _np_policy(LOGP, OLD_LOGP, ADV, MASK, 0.2, 0.28, 2.5, "sequence"),
        "value": _np_value(VALUES, OLD_VALUES, RETURNS, MASK, 0.2, "token"),
        "value_unclipped_seq": _np_value(VALUES, OLD_VALUES, RETURNS, MASK, None, "sequence"),
        "entropy": (-_np_mean(ENTROPY, MASK), {"entropy": _np_mean(ENTROPY, MASK)}),
    }
    _assert_trees_close(r, expected, rtol=1e-5, atol=1e-6)
    # the sample exercises every branch
    assert 0 < float(r["plain"][1]["clip_frac"]) < 1 and float(r["dual_high_seq"][1]["dual_clip_frac"]) > 0
    assert 0 < float(r["value"][1]["value_clip_frac"]) < 1


def test_ppo_jit_equals_eager():
    _assert_trees_close(_battery(LOGP, VALUES, ENTROPY), jax.jit(_battery)(LOGP, VALUES, ENTROPY))


def test_ppo_grads():
    _grads_x64(_losses_only, LOGP, VALUES, ENTROPY)


def test_ppo_fully_masked_and_garbage_padding():
    def total(logp, values, entropy, mask):
        return (
            L.ppo_policy_loss(logp, OLD_LOGP, ADV, mask, dual_clip=3.0)[0]
            + L.ppo_value_loss(values, OLD_VALUES, RETURNS, mask)[0]
            + L.entropy_loss(entropy, mask, aggregation="sequence")[0]
        )

    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))
    v, grads = value_and_grad(LOGP, VALUES, ENTROPY, np.zeros_like(MASK))
    assert float(v) == 0.0 and all(np.all(np.isfinite(g)) for g in grads)
    # TRL writes INVALID_LOGPROB = 1.0 into padded log-probs; others leave -inf or NaN
    for junk in (1.0, -np.inf, np.nan):
        dirty = [np.where(MASK == 1, a, junk).astype(np.float32) for a in (LOGP, VALUES, ENTROPY)]
        _assert_trees_close(value_and_grad(*dirty, MASK), value_and_grad(LOGP, VALUES, ENTROPY, MASK))


def test_ppo_float32_whatever_dtype():
    args = [jnp.asarray(a, jnp.bfloat16) for a in (LOGP, VALUES, ENTROPY)]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(jax.eval_shape(_battery, *args)))
