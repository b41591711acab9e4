"""Critic-free losses: GRPO / Dr. GRPO group advantages, RLOO and REINFORCE++ advantages, the GRPO
loss in TRL's four aggregations and RLOO's sequence-level loss.

Worked by hand (comments), against TRL 1.12's own code on the same arrays (its trainers' loss
methods run on a stub ``self``; where TRL has no function, its lines are transcribed and say so),
and against NumPy. Also: the token- and sequence-level losses do not depend on the minibatch split.
"""

from __future__ import annotations

import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import (group_advantages, grpo_loss, kl_penalty, reinforce_pp_advantages, rloo_advantages,
                             sequence_policy_loss, zero_variance_groups)

torch = pytest.importorskip("torch")
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_rloo = pytest.importorskip("trl.trainer.rloo_trainer")
from trl.trainer.utils import nanstd  # noqa: E402

# 2 prompts x 3 samples: prompt 0 scored 1, 0, 0; prompt 1 scored 2, 2, 2 (all equal)
SCORES = np.array([1.0, 0.0, 0.0, 2.0, 2.0, 2.0], np.float32)


# --------------------------------------------------------------------------------------------
# advantages by hand


def test_group_advantages_by_hand():
    # group 0: mean 1/3, deviations (2/3, -1/3, -1/3); unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3,
    # std = 0.577350; A = dev / (0.577350 + 1e-4) = (1.154500, -0.577250, -0.577250)
    # group 1: all equal -> A = 0 (and the group is counted as zero-variance)
    a = group_advantages(SCORES, group_size=3)
    np.testing.assert_allclose(a, [1.154500, -0.577250, -0.577250, 0, 0, 0], atol=2e-6)
    np.testing.assert_array_equal(zero_variance_groups(SCORES, group_size=3), [False, True])
    # Dr. GRPO, no std: the deviations themselves
    np.testing.assert_allclose(group_advantages(SCORES, group_size=3, scale="none"),
                               [2 / 3, -1 / 3, -1 / 3, 0, 0, 0], atol=1e-7)
    # batch std: mean 7/6, squared deviations sum 1/36 + 2 * 49/36 + 3 * 25/36 = 174/36, / 5 = 0.966667,
    # std 0.983192; group 0's deviations / (0.983192 + 1e-4) = (0.677995, -0.338997, -0.338997)
    np.testing.assert_allclose(group_advantages(SCORES, group_size=3, scale="batch"),
                               [0.677995, -0.338997, -0.338997, 0, 0, 0], atol=2e-6)


def test_rloo_advantages_by_hand():
    # leave-one-out: 1 - (0 + 0)/2 = 1;  0 - (1 + 0)/2 = -0.5 (twice); group 1: 2 - 2 = 0
    np.testing.assert_allclose(rloo_advantages(SCORES, group_size=3), [1, -0.5, -0.5, 0, 0, 0], atol=1e-7)
    # = G / (G - 1) * (r - mean): 3/2 * 2/3 = 1
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(SCORES, group_size=1)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(SCORES, group_size=4)


def test_reinforce_pp_advantages_by_hand():
    # two rows, beta 0.5, k1 KL (0.2, 0.4) on row 0 (2 tokens) and 0.2 on row 1 (1 token);
    # scores 1 and 0. Rewards: row 0 (-0.1, -0.2 + 1) = (-0.1, 0.8); row 1 (-0.1).
    # Returns (gamma 1): row 0 (0.7, 0.8), row 1 (-0.1). Mean 1.4/3 = 0.466667; unbiased var =
    # ((0.233333)^2 + (0.333333)^2 + (0.566667)^2) / 2 = 0.243333; A = (R - mean) / sqrt(var + 1e-8)
    kl = jnp.array([[0.2, 0.4], [0.2, 9.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    adv, ret = reinforce_pp_advantages(jnp.array([1.0, 0.0]), kl, mask, beta=0.5)
    np.testing.assert_allclose(ret, [[0.7, 0.8], [-0.1, 0.0]], atol=1e-6)
    sd = np.sqrt(0.243333)
    np.testing.assert_allclose(adv, [[0.233333 / sd, 0.333333 / sd], [-0.566667 / sd, 0.0]], atol=2e-5)
    # gamma 0.5: row 0's first return = -0.1 + 0.5 * 0.8 = 0.3
    _, ret = reinforce_pp_advantages(jnp.array([1.0, 0.0]), kl, mask, beta=0.5, gamma=0.5)
    np.testing.assert_allclose(ret[0, 0], 0.3, atol=1e-6)
    # REINFORCE++-baseline: the group mean score (0.5) is subtracted first: scores (0.5, -0.5)
    _, ret = reinforce_pp_advantages(jnp.array([1.0, 0.0]), kl, mask, beta=0.5, group_size=2)
    np.testing.assert_allclose(ret, [[0.2, 0.3], [-0.6, 0.0]], atol=1e-6)


# --------------------------------------------------------------------------------------------
# advantages against TRL 1.12 (lines transcribed from the trainers: TRL has no function for them)


def trl_group_advantages(rewards, num_generations, scale_rewards):
    # transcribed from trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions,
    # multi_objective_aggregation == "sum_then_normalize" (TRL 1.12.0)
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    return advantages, is_std_zero


def trl_rloo_advantages(rewards, num_generations, normalize_advantages):
    # transcribed from trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions (TRL 1.12.0)
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)
    advantages = rewards - baselines.view(-1)
    if normalize_advantages:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale):
    rng = np.random.default_rng(0)
    r = rng.normal(size=32).astype(np.float32)
    r[8:16] = 0.5  # a zero-variance group
    ref, zero = trl_group_advantages(torch.tensor(r), 8, scale)
    np.testing.assert_allclose(group_advantages(r, group_size=8, scale=scale), ref.numpy(), rtol=1e-5, atol=1e-6)
    if scale == "group":  # TRL counts zero-std groups from the same std (repeated per row)
        np.testing.assert_array_equal(np.repeat(np.asarray(zero_variance_groups(r, group_size=8)), 8), zero.numpy())


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_match_trl(normalize):
    rng = np.random.default_rng(1)
    r = rng.normal(size=24).astype(np.float32)
    ref = trl_rloo_advantages(torch.tensor(r), 4, normalize)
    np.testing.assert_allclose(rloo_advantages(r, group_size=4, normalize=normalize), ref.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_rloo_kl_in_the_reward_matches_trl():
    """RLOOTrainer's reward with the KL penalty (k1 summed over the completion, TRL 1.12 lines
    transcribed: ``rewards - beta * ((old - ref) * mask).sum(-1)``), then its advantages, against
    the advantage step of our RLOO (``make_rloo``'s)."""
    from rlhf_jax.train import RLOOConfig
    from rlhf_jax.train.critic_free.algorithm import _rloo_advantages

    _, old, ref, mask, _ = _arrays(b=8, t=6, seed=9)
    scores = np.random.default_rng(9).normal(size=8).astype(np.float32)
    for normalize in (False, True):
        config = RLOOConfig(batch_size=2, group_size=4, kl_coef=0.05, normalize_advantages=normalize)
        rewards = torch.tensor(scores) - 0.05 * ((torch.tensor(old) - torch.tensor(ref)) * torch.tensor(mask)).sum(-1)
        want = trl_rloo_advantages(rewards, 4, normalize)
        got, m = _rloo_advantages(config, scores, old, ref, mask.astype(np.float32))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m["reward_total"], rewards.mean().item(), rtol=1e-5, atol=1e-7)

def test_reinforce_pp_matches_numpy():
    rng = np.random.default_rng(2)
    b, t = 6, 7
    kl = rng.normal(size=(b, t)).astype(np.float32) * 0.1
    lengths = np.array([7, 3, 1, 5, 7, 2])
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    scores = rng.normal(size=b).astype(np.float32)
    beta, gamma = 0.3, 0.9
    adv, _ = reinforce_pp_advantages(scores, kl, mask, beta=beta, gamma=gamma, group_size=3)
    s = scores - np.repeat(scores.reshape(-1, 3).mean(1), 3)
    ret = np.zeros((b, t))
    for i in range(b):
        r = -beta * kl[i, :lengths[i]]
        r[-1] += s[i]
        acc = 0.0
        for j in reversed(range(lengths[i])):
            acc = r[j] + gamma * acc
            ret[i, j] = acc
    vals = ret[mask > 0]
    want = np.where(mask > 0, (ret - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8), 0.0)
    np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# losses against TRL 1.12's own _compute_loss (run on a stub trainer with the same arrays)


class _Accelerator:
    num_processes = 1

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    gather_for_metrics = gather


def _arrays(b=8, t=6, seed=0):
    rng = np.random.default_rng(seed)
    logp = (rng.normal(size=(b, t)) * 0.3 - 1.0).astype(np.float32)
    old = (logp + rng.normal(size=(b, t)) * 0.25).astype(np.float32)
    ref = (logp + rng.normal(size=(b, t)) * 0.1).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=b)
    lengths[3] = 0  # an empty completion
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    adv = rng.normal(size=b).astype(np.float32)
    return logp, old, ref, mask, adv


def _trl_stub(cls, logp_t, **attrs):
    b, t = logp_t.shape
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda model, *a, **k: (logp_t, torch.zeros(b, t), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.0,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=False, model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        accelerator=_Accelerator(), _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)}, max_completion_length=t)
    for k, v in attrs.items():
        setattr(stub, k, v)
    return stub


def _trl_inputs(old, ref, mask, adv):
    b, t = mask.shape
    ones = torch.ones(b, 2, dtype=torch.long)
    return dict(prompt_ids=ones, prompt_mask=ones, completion_ids=torch.ones(b, t, dtype=torch.long),
                completion_mask=torch.tensor(mask), advantages=torch.tensor(adv), old_per_token_logps=torch.tensor(old),
                ref_per_token_logps=torch.tensor(ref), num_items_in_batch=torch.tensor(mask).sum(),
                old_logps=(torch.tensor(old) * torch.tensor(mask)).sum(1))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,estimator", [(0.0, "k3"), (0.04, "k3")])
def test_grpo_loss_matches_trl(loss_type, beta, estimator):
    logp, old, ref, mask, adv = _arrays()
    logp_t = torch.tensor(logp, requires_grad=True)
    stub = _trl_stub(trl_grpo.GRPOTrainer, logp_t, beta=beta, loss_type=loss_type, epsilon_low=0.2,
                     epsilon_high=0.28)
    want = trl_grpo.GRPOTrainer._compute_loss(stub, None, _trl_inputs(old, ref, mask, adv))
    want.backward()

    def ours(lp):
        return grpo_loss(lp, old, adv, mask, ref_logp=ref, beta=beta, kl_estimator=estimator, clip_eps=0.2,
                         clip_eps_high=0.28, loss_type=loss_type)

    (loss, m), grad = jax.jit(jax.value_and_grad(ours, has_aux=True))(jnp.asarray(logp))
    np.testing.assert_allclose(loss, want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, logp_t.grad.numpy(), rtol=1e-5, atol=1e-7)
    if beta:  # TRL's logged KL is the same token mean of k3
        np.testing.assert_allclose(m["kl"], stub._metrics["train"]["kl"][0], rtol=1e-5, atol=1e-8)
    # TRL's clip fractions: low + high (disjoint) = ours
    np.testing.assert_allclose(m["clip_frac"], stub._metrics["train"]["clip_ratio/region_mean"][0], atol=1e-6)


def test_rloo_sequence_loss_matches_trl():
    logp, old, _, mask, adv = _arrays(seed=3)
    old = (logp + (old - logp) * 0.5).astype(np.float32)  # sequence ratios in and out of the clip range
    logp_t = torch.tensor(logp, requires_grad=True)
    stub = _trl_stub(trl_rloo.RLOOTrainer, logp_t, epsilon_low=0.2, epsilon_high=0.3)
    want = trl_rloo.RLOOTrainer._compute_loss(stub, None, _trl_inputs(old, old, mask, adv))
    want.backward()
    (loss, m), grad = jax.jit(jax.value_and_grad(
        lambda lp: sequence_policy_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.3), has_aux=True))(
        jnp.asarray(logp))
    np.testing.assert_allclose(loss, want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, logp_t.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert 0 < float(m["clip_frac"]) < 1


# --------------------------------------------------------------------------------------------
# independence of the minibatch split


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "sequence"])
def test_minibatch_gradients_add_up_to_the_batch_gradient(loss_type):
    """With the whole batch's counts passed in, the gradients of any split into minibatches add up
    to the whole batch's gradient (lengths differ a lot between minibatches here)."""
    logp, old, ref, mask, adv = _arrays(b=12, t=9, seed=4)

    @jax.jit
    @jax.value_and_grad
    def loss(lp, o, r, m, a):
        if loss_type == "sequence":
            return sequence_policy_loss(lp, o, a, m, num_sequences=12.0)[0]
        return grpo_loss(lp, o, a, m, ref_logp=r, beta=0.1, loss_type=loss_type, num_tokens=float(mask.sum()),
                         num_sequences=12.0)[0]

    full_loss, full = loss(logp, old, ref, mask, adv)
    for split in ([4, 4, 4], [6, 6]):
        starts = np.cumsum([0] + split)
        parts = [loss(*(x[i:i + n] for x in (logp, old, ref, mask, adv))) for i, n in zip(starts, split)]
        np.testing.assert_allclose(np.concatenate([g for _, g in parts]), full, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(sum(float(v) for v, _ in parts), full_loss, rtol=1e-5, atol=1e-7)


def test_bnpo_depends_on_the_split_as_documented():
    logp, old, ref, mask, adv = _arrays(b=12, t=9, seed=4)
    g = jax.jit(jax.grad(lambda lp, o, m, a: grpo_loss(lp, o, a, m, loss_type="bnpo")[0]))
    full = g(logp, old, mask, adv)
    halves = np.concatenate([g(logp[:6], old[:6], mask[:6], adv[:6]), g(logp[6:], old[6:], mask[6:], adv[6:])])
    assert not np.allclose(halves / 2, full, atol=1e-6)  # each half is normalised by its own tokens


# --------------------------------------------------------------------------------------------
# KL term, masks, shapes


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_term_is_beta_times_the_token_mean(estimator):
    logp, _, ref, mask, adv = _arrays(seed=5)
    base, _ = jax.jit(lambda lp: grpo_loss(lp, lp, adv, mask, loss_type="bnpo"))(logp)
    with_kl, m = jax.jit(lambda lp: grpo_loss(lp, lp, adv, mask, ref_logp=ref, beta=0.5, kl_estimator=estimator,
                                              loss_type="bnpo"))(logp)
    kl = np.asarray(kl_penalty(logp, ref, estimator=estimator))
    want = (kl * mask).sum() / mask.sum()
    np.testing.assert_allclose(m["kl"], want, rtol=1e-5)
    np.testing.assert_allclose(with_kl - base, 0.5 * want, rtol=1e-5, atol=1e-7)


def test_on_policy_ratio_is_one_and_kl_zero_at_the_reference():
    logp, _, _, mask, adv = _arrays(seed=6)
    loss, m = jax.jit(lambda lp: grpo_loss(lp, jax.lax.stop_gradient(lp), adv, mask, ref_logp=lp, beta=0.1))(logp)
    assert float(m["kl"]) == 0.0 and float(m["ratio_max"]) == 1.0 and float(m["clip_frac"]) == 0.0
    # on-policy: the loss is -sum(A m) / N_tok exactly
    np.testing.assert_allclose(loss, -(adv[:, None] * mask).sum() / mask.sum(), rtol=1e-6)


def test_garbage_outside_the_mask_and_empty_rows_keep_gradients_finite():
    logp, old, ref, mask, adv = _arrays(seed=7)
    logp = np.where(mask > 0, logp, np.nan).astype(np.float32)
    old = np.where(mask > 0, old, np.inf).astype(np.float32)
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        g = jax.jit(jax.grad(lambda lp: grpo_loss(lp, old, adv, mask, ref_logp=ref, beta=0.1, loss_type=lt)[0]))(logp)
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[mask == 0] == 0)
    g = jax.jit(jax.grad(lambda lp: grpo_loss(lp, old, adv, np.zeros_like(mask), loss_type="dapo")[0]))(logp)
    assert np.all(np.asarray(g) == 0)


def test_shapes_are_checked_at_the_door():
    logp, old, ref, mask, adv = _arrays()
    with pytest.raises(AssertionError):
        grpo_loss(logp, old, adv, mask[:, :-1])
    with pytest.raises(AssertionError):
        grpo_loss(logp, old, adv[:-1], mask)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, adv, mask, loss_type="token")


def test_jit_equals_eager():
    logp, old, ref, mask, adv = _arrays(seed=8)
    f = lambda lp: grpo_loss(lp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="dr_grpo")  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(logp)[0], f(logp)[0], rtol=1e-6)
