"""KL estimators, exact KL, the KL loss, GAE and the KL controllers: hand-worked values, NumPy /
PyTorch references (TRL 1.12's GAE loop), jit, float64 gradient checks, masked inputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses as L


from tests.loss_helpers import assert_trees_close as _assert_trees_close
from tests.loss_helpers import grads_x64 as _grads_x64


RNG = np.random.default_rng(1)
B, T, V = 3, 6, 5
LOGP = (-RNG.random((B, T)) * 3).astype(np.float32)
REF_LOGP = (LOGP + RNG.normal(scale=0.5, size=(B, T))).astype(np.float32)
LOGITS = RNG.normal(size=(B, T, V)).astype(np.float32)
REF_LOGITS = (LOGITS + RNG.normal(scale=0.7, size=(B, T, V))).astype(np.float32)
# right padding, left padding and a hole in the middle
MASK = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0]], np.int32)
REWARDS = RNG.normal(size=(B, T)).astype(np.float32)
VALUES = RNG.normal(size=(B, T)).astype(np.float32)


def _kl_battery(logp, ref_logp, logits, ref_logits):
    out = {k: L.kl_penalty(logp, ref_logp, estimator=k) for k in ("k1", "k2", "k3")}
    out["k3_clamped"] = L.kl_penalty(logp, ref_logp, estimator="k3", clamp=0.3)
    out["exact"] = L.exact_kl_from_logits(logits, ref_logits)
    out["exact_tau"] = L.exact_kl_from_logits(logits, ref_logits, temperature=0.7)
    out["loss"] = L.kl_loss(logp, ref_logp, MASK)
    out["loss_k2_seq"] = L.kl_loss(logp, ref_logp, MASK, estimator="k2", aggregation="sequence")
    return out


def _gae_battery(rewards, values):
    return {
        "default": L.gae(rewards, values, MASK),
        "discounted": L.gae(rewards, values, MASK, gamma=0.9, lam=0.5),
    }


# ----------------------------------------------------------------------------- KL


def test_kl_hand_example():
    @jax.jit
    def run():
        logp, ref = jnp.array([[math.log(0.5)]]), jnp.array([[math.log(0.25)]])
        p, q = jnp.array([[[math.log(0.5), math.log(0.5)]]]), jnp.array([[[math.log(0.25), math.log(0.75)]]])
        return {
            "k1": L.kl_penalty(logp, ref, estimator="k1")[0, 0],
            "k2": L.kl_penalty(logp, ref, estimator="k2")[0, 0],
            "k3": L.kl_penalty(logp, ref, estimator="k3")[0, 0],
            "k1_clamped": L.kl_penalty(jnp.array([[20.0]]), jnp.array([[0.0]]), clamp=10.0)[0, 0],
            "exact": L.exact_kl_from_logits(p, q)[0, 0],
            "exact_self": L.exact_kl_from_logits(q, q)[0, 0],
            # tokens: d = ln2 (kept), d = 5 (masked out) -> k3 mean over the one real token
            "loss": L.kl_loss(jnp.array([[math.log(0.5), 5.0]]), jnp.array([[math.log(0.25), 0.0]]), jnp.array([[1, 0]])),
        }

    ln2 = math.log(2)
    k3 = 0.5 - 1 + ln2  # exp(-ln2) - 1 + ln2 = 0.19315
    expected = {
        "k1": ln2,  # d = log 0.5 - log 0.25 = ln 2 = 0.69315
        "k2": 0.5 * ln2**2,  # 0.24023
        "k3": k3,
        "k1_clamped": 10.0,  # d = 20 clamped to 10
        "exact": 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),  # 0.5 ln2 + 0.5 ln(2/3) = 0.14384
        "exact_self": 0.0,
        "loss": (k3, {"kl": k3, "kl_max": k3, "kl_per_sequence": k3}),
    }
    _assert_trees_close(run(), jax.tree.map(np.float32, expected))
    with pytest.raises(ValueError):
        L.kl_penalty(LOGP, REF_LOGP, estimator="k4")


def test_kl_match_numpy_and_torch():
    r = jax.jit(_kl_battery)(LOGP, REF_LOGP, LOGITS, REF_LOGITS)
    d = LOGP.astype(np.float64) - REF_LOGP
    dc = np.clip(d, -0.3, 0.3)

    def np_exact(a, b):
        la = a - np.log(np.exp(a).sum(-1, keepdims=True))
        lb = b - np.log(np.exp(b).sum(-1, keepdims=True))
        return (np.exp(la) * (la - lb)).sum(-1)

    k3 = np.exp(-d) - 1 + d
    k2 = 0.5 * d**2
    seq_k2 = np.array([k2[i][MASK[i] == 1].mean() for i in range(B)]).mean()
    k3_tok = k3[MASK == 1]
    expected = {
        "k1": d,
        "k2": k2,
        "k3": k3,
        "k3_clamped": np.exp(-dc) - 1 + dc,
        "exact": np_exact(LOGITS.astype(np.float64), REF_LOGITS),
        "exact_tau": np_exact(LOGITS.astype(np.float64) / 0.7, REF_LOGITS / 0.7),
        "loss": (
            k3_tok.mean(),
            {"kl": k3_tok.mean(), "kl_max": k3_tok.max(), "kl_per_sequence": (k3 * MASK).sum(1).mean()},
        ),
        "loss_k2_seq": (seq_k2, {"kl": seq_k2, "kl_max": k2[MASK == 1].max(), "kl_per_sequence": (k2 * MASK).sum(1).mean()}),
    }
    _assert_trees_close(r, expected, rtol=1e-5, atol=1e-6)

    torch = pytest.importorskip("torch")
    # exact KL(p || q) = sum p (log p - log q) is torch's kl_div(input=log q, target=log p)
    lp = torch.log_softmax(torch.tensor(LOGITS), -1)
    lq = torch.log_softmax(torch.tensor(REF_LOGITS), -1)
    ref = torch.nn.functional.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    np.testing.assert_allclose(r["exact"], ref.numpy(), rtol=1e-5, atol=1e-6)


def test_kl_estimators_are_unbiased_for_exact_kl():
    # Sample tokens from p; E_p[k1] = E_p[k3] = KL(p || q); k2 is biased upwards here.
    p_logits = jnp.array([1.0, 0.0, -1.0, 0.5, 2.0])
    q_logits = jnp.array([0.5, 0.2, -0.5, 1.0, 1.0])
    tokens = jax.random.categorical(jax.random.key(0), p_logits, shape=(1, 100_000))

    @jax.jit
    def run(tokens):
        lp = L.token_logprobs(jnp.broadcast_to(p_logits, tokens.shape + (5,)), tokens)
        lq = L.token_logprobs(jnp.broadcast_to(q_logits, tokens.shape + (5,)), tokens)
        exact = L.exact_kl_from_logits(p_logits[None, None], q_logits[None, None])[0, 0]
        return exact, {k: jnp.mean(L.kl_penalty(lp, lq, estimator=k)) for k in ("k1", "k2", "k3")}

    exact, est = run(tokens)
    # exact = 0.1599...; the standard error of the k1 mean is ~0.002 at 100k samples
    assert float(est["k1"]) == pytest.approx(float(exact), abs=0.01)
    assert float(est["k3"]) == pytest.approx(float(exact), abs=0.01)


def test_kl_jit_equals_eager():
    args = (LOGP, REF_LOGP, LOGITS, REF_LOGITS)
    _assert_trees_close(_kl_battery(*args), jax.jit(_kl_battery)(*args))


def test_kl_grads():
    # clamp at 0.3 sits away from every |d| in this sample, so finite differences do not straddle it
    assert np.all(np.abs(np.abs(LOGP - REF_LOGP) - 0.3) > 1e-3)

    def no_metrics(*args):  # metrics carry no gradient (stop_gradient), so leave them out
        return {k: v[0] if isinstance(v, tuple) else v for k, v in _kl_battery(*args).items()}

    _grads_x64(no_metrics, LOGP, REF_LOGP, LOGITS, REF_LOGITS)


def test_kl_loss_fully_masked_and_garbage():
    def loss(logp, mask):
        return L.kl_loss(logp, REF_LOGP, mask)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    v, g = value_and_grad(LOGP, np.zeros_like(MASK))
    assert float(v) == 0.0 and np.all(np.isfinite(g))
    # -inf log-probs under the mask (exp(-d) would overflow) change nothing
    dirty = np.where(MASK == 1, LOGP, -np.inf).astype(np.float32)
    _assert_trees_close(value_and_grad(dirty, MASK), value_and_grad(LOGP, MASK))
    # bf16 inputs -> float32 results
    lb, zb = jnp.asarray(LOGP, jnp.bfloat16), jnp.asarray(LOGITS, jnp.bfloat16)
    shapes = jax.eval_shape(lambda a, b: _kl_battery(a, a, b, b), lb, zb)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    shapes = jax.eval_shape(_gae_battery, lb, lb)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))


# ----------------------------------------------------------------------------- GAE


def _np_gae(rewards, values, mask, gamma, lam):
    """Independent reference: walk each row's real positions backwards."""
    adv = np.zeros(rewards.shape, np.float64)
    for b in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[b])
        next_v, next_a = 0.0, 0.0
        for t in idx[::-1]:
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            next_a = delta + gamma * lam * next_a
            next_v = values[b, t]
            adv[b, t] = next_a
    return adv, np.where(mask == 1, adv + values, 0.0)


def test_gae_hand_example():
    @jax.jit
    def run():
        r, v = jnp.array([[0.0, 0.0, 1.0]]), jnp.array([[0.5, 0.5, 0.5]])
        hole_r, hole_v = jnp.array([[0.0, 99.0, 1.0]]), jnp.array([[0.5, 99.0, 0.5]])
        return {
            "mc": L.gae(r, v, jnp.ones((1, 3)), gamma=1.0, lam=1.0),
            "discounted": L.gae(r, v, jnp.ones((1, 3)), gamma=0.9, lam=0.5),
            "hole": L.gae(hole_r, hole_v, jnp.array([[1, 0, 1]]), gamma=0.9, lam=0.5),
        }

    expected = {
        # gamma = lam = 1: A_t = sum of future rewards - V_t = 1 - 0.5 everywhere; R_t = 1
        "mc": ([[0.5, 0.5, 0.5]], [[1.0, 1.0, 1.0]]),
        # gamma 0.9, lam 0.5 (gamma * lam = 0.45):
        #   delta_2 = 1 - 0.5 = 0.5                 A_2 = 0.5
        #   delta_1 = 0 + 0.9 * 0.5 - 0.5 = -0.05   A_1 = -0.05 + 0.45 * 0.5 = 0.175
        #   delta_0 = -0.05                         A_0 = -0.05 + 0.45 * 0.175 = 0.02875
        #   R = A + V = [0.52875, 0.675, 1.0]
        "discounted": ([[0.02875, 0.175, 0.5]], [[0.52875, 0.675, 1.0]]),
        # the masked middle step is skipped: positions 0 and 2 behave like adjacent steps
        #   A_2 = 0.5; A_0 = (0 + 0.9 * 0.5 - 0.5) + 0.45 * 0.5 = 0.175; A_1 = R_1 = 0
        "hole": ([[0.175, 0.0, 0.5]], [[0.675, 0.0, 1.0]]),
    }
    _assert_trees_close(run(), jax.tree.map(np.float32, expected))


def test_gae_match_numpy():
    r = jax.jit(_gae_battery)(REWARDS, VALUES)
    expected = {
        "default": _np_gae(REWARDS, VALUES, MASK, 1.0, 0.95),
        "discounted": _np_gae(REWARDS, VALUES, MASK, 0.9, 0.5),
    }
    _assert_trees_close(r, expected, rtol=1e-5, atol=1e-6)


def test_gae_left_padding_equals_right_padding():
    lengths = np.array([4, 2, 6])
    right = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    shift = T - lengths
    roll = jax.vmap(lambda x, s: jnp.roll(x, s))
    left_r, left_v, left_m = (roll(jnp.asarray(a), shift) for a in (REWARDS, VALUES, right))
    f = jax.jit(lambda r, v, m: L.gae(r, v, m, gamma=0.99, lam=0.9))
    adv_r, ret_r = f(REWARDS, VALUES, right)
    adv_l, ret_l = f(left_r, left_v, left_m)
    _assert_trees_close((roll(adv_r, shift), roll(ret_r, shift)), (adv_l, ret_l))


def test_gae_matches_trl_ppo_loop():
    torch = pytest.importorskip("torch")
    # TRL 1.12 (trl/experimental/ppo/ppo_trainer.py, step 6) computes GAE inline over right-padded
    # rows whose values and rewards are zeroed past the end; transcribed here verbatim.
    lengths = np.array([4, 2, 6])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    rewards = torch.tensor(REWARDS * mask)
    values = torch.tensor(VALUES * mask)
    gamma, lam = 0.99, 0.95
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values

    adv, ret = jax.jit(lambda r, v, m: L.gae(r, v, m, gamma=gamma, lam=lam))(REWARDS, VALUES, mask)
    np.testing.assert_allclose(np.asarray(adv)[mask == 1], advantages.numpy()[mask == 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[mask == 1], returns.numpy()[mask == 1], rtol=1e-5, atol=1e-6)


def test_gae_jit_equals_eager_and_grads():
    _assert_trees_close(_gae_battery(REWARDS, VALUES), jax.jit(_gae_battery)(REWARDS, VALUES))
    _grads_x64(_gae_battery, REWARDS, VALUES)


def test_gae_fully_masked_and_garbage():
    def total(r, v, m):
        adv, ret = L.gae(r, v, m, gamma=0.9, lam=0.8)
        return jnp.sum(adv**2) + jnp.sum(ret**2)

    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
    val, grads = value_and_grad(REWARDS, VALUES, np.zeros_like(MASK))
    assert float(val) == 0.0 and all(np.all(np.isfinite(g)) for g in grads)
    dirty_v = np.where(MASK == 1, VALUES, np.nan).astype(np.float32)
    dirty_r = np.where(MASK == 1, REWARDS, np.inf).astype(np.float32)
    _assert_trees_close(value_and_grad(dirty_r, dirty_v, MASK), value_and_grad(REWARDS, VALUES, MASK))


# ----------------------------------------------------------------------------- KL controllers


def test_kl_controller_hand_example():
    ctrl = L.adaptive_kl_controller(init_beta=0.1, target=6.0, horizon=100.0)
    update = jax.jit(ctrl.update)
    s0 = ctrl.init()
    # kl = 12: error = clip(12/6 - 1, -0.2, 0.2) = 0.2; beta = 0.1 * (1 + 0.2 * 10/100) = 0.102
    assert float(update(s0, 12.0, 10).beta) == pytest.approx(0.102, rel=1e-6)
    # kl = 3: error = clip(-0.5) = -0.2; beta = 0.1 * (1 - 0.02) = 0.098
    assert float(update(s0, 3.0, 10).beta) == pytest.approx(0.098, rel=1e-6)
    # kl = 6.6: error = 6.6/6 - 1 = 0.1 (inside the clip); beta = 0.1 * (1 + 0.1 * 10/100) = 0.101
    assert float(update(s0, 6.6, 10).beta) == pytest.approx(0.101, rel=1e-6)
    # on target: unchanged
    assert float(update(s0, 6.0, 10).beta) == pytest.approx(0.1, rel=1e-6)
    fixed = L.fixed_kl_controller(0.05)
    assert float(jax.jit(fixed.update)(fixed.init(), 100.0, 10).beta) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        L.adaptive_kl_controller(init_beta=0.1, target=0.0, horizon=10.0)


def test_kl_controller_matches_reference_loop_and_scan():
    # Reference: Ziegler et al.'s AdaptiveKLController (lm-human-preferences / old TRL), in Python.
    init_beta, target, horizon = 0.2, 6.0, 1000.0
    kls = RNG.uniform(0, 15, size=20)
    beta, expected = init_beta, []
    for kl in kls:
        proportional_error = np.clip(kl / target - 1, -0.2, 0.2)
        beta *= 1 + proportional_error * 64 / horizon
        expected.append(beta)

    ctrl = L.adaptive_kl_controller(init_beta=init_beta, target=target, horizon=horizon)

    def body(state, kl):
        state = ctrl.update(state, kl, 64)
        return state, state.beta

    # the state is a pytree, so the controller runs inside lax.scan (and hence inside a jitted loop)
    _, betas = jax.jit(lambda kls: jax.lax.scan(body, ctrl.init(), kls))(kls.astype(np.float32))
    np.testing.assert_allclose(betas, expected, rtol=1e-5)
    # eager equals jit
    state = ctrl.init()
    for kl in kls[:3]:
        state = ctrl.update(state, kl, 64)
    np.testing.assert_allclose(state.beta, betas[2], rtol=1e-6)
    assert isinstance(state, L.KLControllerState) and isinstance(ctrl, L.KLController)
