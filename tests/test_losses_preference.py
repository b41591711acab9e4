"""Reward-model losses (Bradley-Terry, K-way ranking, best-of-K) and DPO / IPO: hand-worked values,
NumPy references, transcriptions of TRL 1.12's inline reward-trainer / DPO-trainer math, jit,
float64 gradient checks, masked pairs."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses as L


from tests.loss_helpers import assert_trees_close as _assert_trees_close
from tests.loss_helpers import grads_x64 as _grads_x64


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


RNG = np.random.default_rng(3)
B, K = 4, 4
R_CHOSEN = RNG.normal(size=B).astype(np.float32)
R_REJECTED = RNG.normal(size=B).astype(np.float32)
PAIR_MASK = np.array([1, 1, 0, 1], np.int32)
MARGIN = RNG.random(B).astype(np.float32)
SCORES = RNG.normal(size=(B, K)).astype(np.float32)
RANKS = np.array([[1, 2, 3, 4], [2, 1, 2, 3], [1, 1, 1, 1], [3, 1, 2, 9]], np.int32)  # ties; all tied
VALID = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]], np.int32)  # row 2: no pairs
BEST = np.array([0, 1, 3, 2], np.int32)
LOGPS = (-RNG.random((4, B)) * 20).astype(np.float32)  # policy chosen/rejected, ref chosen/rejected


def _battery(r_chosen, r_rejected, scores, logps):
    pc, pr, rc, rr = logps
    return {
        "bt": L.bradley_terry_loss(r_chosen, r_rejected),
        "bt_margin_center_masked": L.bradley_terry_loss(r_chosen, r_rejected, PAIR_MASK, margin=MARGIN, center_coef=0.01),
        "ranking": L.ranking_loss(scores, RANKS, VALID),
        "best_of_k": L.best_of_k_loss(scores, BEST, VALID),
        "dpo": L.dpo_loss(pc, pr, rc, rr, beta=0.1),
        "cdpo_masked": L.dpo_loss(pc, pr, rc, rr, PAIR_MASK, beta=0.5, label_smoothing=0.1),
        "ipo": L.ipo_loss(pc, pr, rc, rr, beta=0.1),
    }


def _losses_only(*args):  # metrics carry no gradient (stop_gradient), so leave them out
    return {k: v[0] for k, v in _battery(*args).items()}


# ----------------------------------------------------------------------------- hand examples


def test_reward_losses_hand_example():
    @jax.jit
    def run():
        ln3 = math.log(3.0)
        return {
            "bt": L.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0])),
            "bt_margin": L.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0]), margin=0.5)[0],
            "bt_center": L.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0]), center_coef=0.01)[0],
            "ranking": L.ranking_loss(jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[1, 2, 3]])),
            "ranking_ties": L.ranking_loss(jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[1, 1, 2]]))[0],
            "ranking_padded": L.ranking_loss(
                jnp.array([[3.0, 2.0, 1.0, 50.0]]), jnp.array([[1, 2, 3, 0]]), jnp.array([[1, 1, 1, 0]])
            )[0],
            "best_of_k": L.best_of_k_loss(jnp.array([[0.0, ln3]]), jnp.array([1])),
            "best_of_k_padded": L.best_of_k_loss(jnp.array([[0.0, ln3, 100.0]]), jnp.array([1]), jnp.array([[1, 1, 0]]))[0],
        }

    s1, s2 = -math.log(1 / (1 + math.exp(-1))), -math.log(1 / (1 + math.exp(-2)))  # 0.31326, 0.12693
    expected = {
        # -log sigmoid(2 - 1) = 0.31326; accuracy 1; margin 1
        "bt": (s1, {"bt_loss": s1, "center_loss": 9.0, "accuracy": 1.0, "margin": 1.0, "chosen_mean": 2.0, "rejected_mean": 1.0}),
        "bt_margin": -math.log(1 / (1 + math.exp(-0.5))),  # -log sigmoid(1 - 0.5) = 0.47408
        "bt_center": s1 + 0.01 * 9.0,  # + 0.01 * (2 + 1)^2
        # pairs (3 vs 2), (3 vs 1), (2 vs 1): (s1 + s2 + s1) / C(3, 2) = 0.25115
        "ranking": ((2 * s1 + s2) / 3, {"accuracy": 1.0, "num_pairs": 3.0}),
        # ranks [1, 1, 2]: items 0 and 1 tie, pairs (3 vs 1), (2 vs 1): (s2 + s1) / 2 = 0.22010
        "ranking_ties": (s1 + s2) / 2,
        "ranking_padded": (2 * s1 + s2) / 3,  # the padded 4th completion forms no pair
        # softmax [0, ln3] = [1/4, 3/4]: -log 3/4 = 0.28768; argmax is the chosen one
        "best_of_k": (-math.log(0.75), {"accuracy": 1.0}),
        "best_of_k_padded": -math.log(0.75),  # the padded 100 is left out of the softmax
    }
    _assert_trees_close(run(), jax.tree.map(np.float32, expected), rtol=1e-6)


def test_dpo_ipo_hand_example():
    @jax.jit
    def run():
        args = (jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-2.0]))
        return {
            "dpo": L.dpo_loss(*args, beta=0.5),
            "cdpo": L.dpo_loss(*args, beta=0.5, label_smoothing=0.1)[0],
            "ipo": L.ipo_loss(*args, beta=0.5)[0],
            "ipo_at_target": L.ipo_loss(*args, beta=0.25)[0],
        }

    s1 = -math.log(1 / (1 + math.exp(-1)))  # -log sigmoid(1) = 0.31326
    s_1 = -math.log(1 / (1 + math.exp(1)))  # -log sigmoid(-1) = 1.31326
    expected = {
        # chosen log-ratio -1 - -2 = 1, rejected -3 - -2 = -1, h = 2; beta h = 1: -log sigmoid(1)
        # implicit rewards beta * log-ratio: 0.5 and -0.5
        "dpo": (s1, {"rewards_chosen": 0.5, "rewards_rejected": -0.5, "reward_accuracy": 1.0, "reward_margin": 1.0}),
        "cdpo": 0.9 * s1 + 0.1 * s_1,  # 0.28193 + 0.13133 = 0.41326
        "ipo": (2 - 1 / (2 * 0.5)) ** 2,  # (h - 1)^2 = 1
        "ipo_at_target": 0.0,  # 1 / (2 * 0.25) = 2 = h
    }
    _assert_trees_close(run(), jax.tree.map(np.float32, expected), rtol=1e-6)


# ----------------------------------------------------------------------------- references


def _np_ranking(scores, ranks, valid):
    per_prompt, correct, n_pairs = [], 0, 0
    for b in range(scores.shape[0]):
        idx = np.flatnonzero(valid[b])
        pairs = [(i, j) for i, j in itertools.permutations(idx, 2) if ranks[b, i] < ranks[b, j]]
        if pairs:
            per_prompt.append(np.mean([-_np_log_sigmoid(scores[b, i] - scores[b, j]) for i, j in pairs]))
        correct += sum(scores[b, i] > scores[b, j] for i, j in pairs)
        n_pairs += len(pairs)
    return np.mean(per_prompt), {"accuracy": correct / n_pairs, "num_pairs": n_pairs}


def _np_best_of_k(scores, best, valid):
    nll, acc = [], []
    for b in range(scores.shape[0]):
        s = scores[b][valid[b] == 1].astype(np.float64)
        logp = s - np.log(np.exp(s).sum())
        k = int(np.sum(valid[b][: best[b]]))  # position of best among the valid ones
        nll.append(-logp[k])
        acc.append(np.argmax(s) == k)
    return np.mean(nll), {"accuracy": np.mean(acc)}


def _np_dpo_metrics(cl, rl, beta, m):
    rc, rr = beta * cl[m == 1], beta * rl[m == 1]
    return {"rewards_chosen": rc.mean(), "rewards_rejected": rr.mean(), "reward_accuracy": (rc > rr).mean(), "reward_margin": (rc - rr).mean()}


def test_preference_match_numpy():
    r = jax.jit(_battery)(R_CHOSEN, R_REJECTED, SCORES, LOGPS)
    rc, rr, m = R_CHOSEN.astype(np.float64), R_REJECTED.astype(np.float64), PAIR_MASK

    def bt(mask, margin, coef):
        d = rc - rr
        bt_loss = np.mean(-_np_log_sigmoid(d - margin)[mask == 1])
        center = np.mean(((rc + rr) ** 2)[mask == 1])
        return bt_loss + coef * center, {
            "bt_loss": bt_loss, "center_loss": center, "accuracy": np.mean((d > 0)[mask == 1]),
            "margin": d[mask == 1].mean(), "chosen_mean": rc[mask == 1].mean(), "rejected_mean": rr[mask == 1].mean(),
        }

    pc, pr, refc, refr = LOGPS.astype(np.float64)
    cl, rl = pc - refc, pr - refr
    ones = np.ones(B, np.int32)
    cdpo = -0.9 * _np_log_sigmoid(0.5 * (cl - rl)) - 0.1 * _np_log_sigmoid(-0.5 * (cl - rl))
    expected = {
        "bt": bt(ones, 0.0, 0.0),
        "bt_margin_center_masked": bt(m, MARGIN, 0.01),
        "ranking": _np_ranking(SCORES, RANKS, VALID),
        "best_of_k": _np_best_of_k(SCORES, BEST, VALID),
        "dpo": (np.mean(-_np_log_sigmoid(0.1 * (cl - rl))), _np_dpo_metrics(cl, rl, 0.1, ones)),
        "cdpo_masked": (cdpo[m == 1].mean(), _np_dpo_metrics(cl, rl, 0.5, m)),
        "ipo": (np.mean((cl - rl - 1 / (2 * 0.1)) ** 2), _np_dpo_metrics(cl, rl, 0.1, ones)),
    }
    _assert_trees_close(r, expected, rtol=1e-5, atol=1e-5)


def test_preference_match_trl_transcriptions():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    # TRL 1.12 RewardTrainer.compute_loss (trl/trainer/reward_trainer.py), verbatim on our arrays
    rewards_chosen, rewards_rejected = torch.tensor(R_CHOSEN), torch.tensor(R_REJECTED)
    margin = torch.tensor(MARGIN)
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected - margin).mean()
    loss += 0.01 * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    ours = jax.jit(lambda a, b: L.bradley_terry_loss(a, b, margin=MARGIN, center_coef=0.01))(R_CHOSEN, R_REJECTED)
    np.testing.assert_allclose(ours[0], loss.item(), rtol=1e-5)
    np.testing.assert_allclose(ours[1]["accuracy"], (rewards_chosen > rewards_rejected).float().mean().item())

    # TRL 1.12 DPOTrainer._compute_loss, loss_type "sigmoid" and "ipo" (reverse-KL f-divergence).
    # "ipo" divides the token-summed scores by the completion lengths; we get the same by feeding
    # length-normalised sequence log-probs.
    T = 5
    tok = (-RNG.random((4, B, T)) * 3).astype(np.float32)
    cmask = (np.arange(T)[None] < RNG.integers(1, T + 1, size=(B, 1))).astype(np.int32)
    rmask = (np.arange(T)[None] < RNG.integers(1, T + 1, size=(B, 1))).astype(np.int32)
    masks = (cmask, rmask, cmask, rmask)
    t_logps = [torch.tensor(t * mk).sum(1) for t, mk in zip(tok, masks)]
    chosen_logratios = t_logps[0] - t_logps[2]
    rejected_logratios = t_logps[1] - t_logps[3]
    beta = 0.1
    trl_sigmoid = (-F.logsigmoid(beta * (chosen_logratios - rejected_logratios))).mean()
    chosen_avg_score = chosen_logratios / torch.tensor(cmask).sum(dim=1).clamp(min=1.0)
    rejected_avg_score = rejected_logratios / torch.tensor(rmask).sum(dim=1).clamp(min=1.0)
    trl_ipo = ((chosen_avg_score - rejected_avg_score - 1 / (2 * beta)) ** 2).mean()

    @jax.jit
    def ours(tok):
        seq = [L.sequence_logprobs(t, mk) for t, mk in zip(tok, masks)]
        avg = [L.sequence_logprobs(t, mk, length_normalize=True) for t, mk in zip(tok, masks)]
        return L.dpo_loss(*seq, beta=beta), L.ipo_loss(*avg, beta=beta)[0]

    (dpo, metrics), ipo = ours(tok)
    np.testing.assert_allclose(dpo, trl_sigmoid.item(), rtol=1e-5)
    np.testing.assert_allclose(ipo, trl_ipo.item(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards_chosen"], (beta * chosen_logratios).mean().item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["reward_margin"], (beta * (chosen_logratios - rejected_logratios)).mean().item(), rtol=1e-5, atol=1e-6)


def test_preference_special_cases_agree():
    @jax.jit
    def run(rc, rr):
        pair = jnp.stack([rc, rr], axis=1)
        return {
            # K = 2 ranking and best-of-2 are both the Bradley-Terry loss
            "bt": L.bradley_terry_loss(rc, rr)[0],
            "ranking_k2": L.ranking_loss(pair, jnp.array([[1, 2]] * B))[0],
            "best_of_2": L.best_of_k_loss(pair, jnp.zeros(B, jnp.int32))[0],
            # DPO with beta = 1 on log-ratios is Bradley-Terry on the implicit rewards
            "dpo_beta1": L.dpo_loss(rc, rr, jnp.zeros(B), jnp.zeros(B), beta=1.0)[0],
        }

    r = run(R_CHOSEN, R_REJECTED)
    for k in ("ranking_k2", "best_of_2", "dpo_beta1"):
        np.testing.assert_allclose(r[k], r["bt"], rtol=1e-6)


def test_preference_jit_equals_eager():
    args = (R_CHOSEN, R_REJECTED, SCORES, LOGPS)
    _assert_trees_close(_battery(*args), jax.jit(_battery)(*args))


def test_preference_grads():
    _grads_x64(_losses_only, R_CHOSEN, R_REJECTED, SCORES, LOGPS)


def test_preference_fully_masked_and_garbage():
    def total(r_chosen, r_rejected, scores, logps, pair_mask, valid):
        return (
            L.bradley_terry_loss(r_chosen, r_rejected, pair_mask, margin=MARGIN, center_coef=0.1)[0]
            + L.ranking_loss(scores, RANKS, valid)[0]
            + L.best_of_k_loss(scores, BEST, valid)[0]
            + L.dpo_loss(*logps, pair_mask, beta=0.1, label_smoothing=0.2)[0]
            + L.ipo_loss(*logps, pair_mask, beta=0.1)[0]
        )

    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3)))
    v, grads = value_and_grad(R_CHOSEN, R_REJECTED, SCORES, LOGPS, np.zeros(B, np.int32), np.zeros((B, K), np.int32))
    assert float(v) == 0.0 and all(np.all(np.isfinite(g)) for g in grads)
    # NaN / inf in padded pairs and completions change nothing
    valid = VALID.copy()
    valid[:, 0] = 1  # keep BEST valid where it points at column 0
    valid[3, 2] = 1
    clean = (R_CHOSEN, R_REJECTED, SCORES, LOGPS)
    dirty = (
        np.where(PAIR_MASK == 1, R_CHOSEN, np.nan).astype(np.float32),
        np.where(PAIR_MASK == 1, R_REJECTED, np.inf).astype(np.float32),
        np.where(valid == 1, SCORES, np.nan).astype(np.float32),
        np.where(PAIR_MASK == 1, LOGPS, -np.inf).astype(np.float32),
    )
    _assert_trees_close(value_and_grad(*dirty, PAIR_MASK, valid), value_and_grad(*clean, PAIR_MASK, valid))


def test_preference_float32_whatever_dtype():
    args = [jnp.asarray(a, jnp.bfloat16) for a in (R_CHOSEN, R_REJECTED, SCORES, LOGPS)]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(jax.eval_shape(_battery, *args)))
