"""Reward-model ensembles on one base: the one-pass scores equal E separate passes, the uncertainty
penalty worked by hand, and the over-optimisation monitor and stop rule inside a tiny PPO run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import Adapter, LoraConfig, init_lora
from rlhf_jax.model import Transformer, init_head
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.scoring import (ClippedScorer, Completions, EnsembleScorer, GapMonitor, RewardModel, ensemble_raw_scores,
                              ensemble_scores, penalised_mean, raw_scores, reward_scores)
from rlhf_jax.train import OptimConfig, PPOConfig, RunConfig, metric_stop, train_ppo
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer


def _member(cfg, lcfg, seed, gain=1.0, bias=0.0):
    """A trained-looking reward model: random A, non-zero random B, random head."""
    if lcfg is None:
        return RewardModel(None, init_head(jax.random.PRNGKey(seed + 50), cfg.hidden_size), gain, bias)
    tree = init_lora(Transformer(cfg, lora=lcfg), jax.random.PRNGKey(seed))
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    tree = jax.tree_util.tree_unflatten(treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    # a head of scale 0.2: scores of order 1, where float32 agrees to ~1e-6
    head = {"kernel": 0.2 * jax.random.normal(jax.random.PRNGKey(seed + 50), (cfg.hidden_size,)),
            "bias": jnp.float32(0.3)}
    return RewardModel(Adapter(tree, lcfg), head, gain, bias)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    base = tiny_base(cfg)
    # ranks 4 and 2, different alphas and targets, and a head on the bare base
    members = [_member(cfg, LoraConfig(rank=4, alpha=8.0), 1, gain=2.0, bias=0.5),
               _member(cfg, LoraConfig(rank=2, alpha=7.0, targets=("q_proj", "v_proj")), 2, gain=0.5, bias=-1.0),
               _member(cfg, None, 3, gain=1.5, bias=0.25)]
    tokens = jax.random.randint(jax.random.PRNGKey(9), (5, 9), 4, cfg.vocab_size)
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9, [0, 0, 0, 0, 0, 1, 1, 1, 1], [0] + [1] * 8, [0, 1] + [1] * 7],
                     jnp.int32)
    return cfg, base, members, tokens, mask


def test_one_pass_equals_separate_passes(setup):
    cfg, base, members, tokens, mask = setup
    one = np.asarray(jax.jit(lambda ms, b: ensemble_scores(cfg, ms, b, tokens, mask))(members, base))
    raw = np.asarray(ensemble_raw_scores(cfg, members, base, tokens, mask))
    assert one.shape == (3, 5)
    for e, m in enumerate(members):
        np.testing.assert_allclose(one[e], np.asarray(reward_scores(cfg, m, base, tokens, mask)), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(raw[e], np.asarray(raw_scores(cfg, m, base, tokens, mask)), atol=1e-5, rtol=1e-5)
    assert np.std(one[:, 0]) > 0.1 and np.std(one[0]) > 0.1  # the members, and the rows, do differ


def test_uncertainty_penalty_by_hand():
    # completion 0: members 1, 3 -> mean 2, std 1; completion 1: members 0, 4 -> mean 2, std 2
    s = jnp.array([[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(np.asarray(penalised_mean(s)), [2.0, 2.0])
    np.testing.assert_allclose(np.asarray(penalised_mean(s, uncertainty_coef=0.5)), [1.5, 1.0])
    # three members 0, 1, 5: mean 2, population std sqrt((4 + 1 + 9) / 3) = 2.1602
    np.testing.assert_allclose(np.asarray(penalised_mean(jnp.array([[0.0], [1.0], [5.0]]), uncertainty_coef=1.0)),
                               [2.0 - np.sqrt(14 / 3)], rtol=1e-6)


def test_scorer_and_monitor_parts(setup):
    cfg, base, members, tokens, mask = setup
    done = Completions(["p"] * 5, ["c"] * 5, tokens, mask)
    sep = np.stack([np.asarray(reward_scores(cfg, m, base, tokens, mask)) for m in members])
    scorer = EnsembleScorer(cfg, members, uncertainty_coef=0.5)
    score, parts = scorer.score_and_parts(done, base)
    np.testing.assert_allclose(score, sep.mean(0) - 0.5 * sep.std(0), atol=1e-5)
    np.testing.assert_allclose(parts["member_1"], sep[1], atol=1e-5)
    np.testing.assert_allclose(parts["std"], sep.std(0), atol=1e-5)
    np.testing.assert_allclose(scorer(done, base), score)
    assert scorer.reward_model is members[0]
    gap, gparts = GapMonitor(cfg, members[:1], members[1:]).score_and_parts(done, base)
    np.testing.assert_allclose(gap, sep[0] - sep[1:].mean(0), atol=1e-5)
    np.testing.assert_allclose(gparts["held_out_std"], sep[1:].std(0), atol=1e-5)


def test_bad_members_are_refused(setup):
    cfg, base, members, *_ = setup
    full = RewardModel(base, members[0].head)
    with pytest.raises(ValueError, match="member 1 is a full parameter tree"):
        EnsembleScorer(cfg, [members[0], full])
    with pytest.raises(ValueError, match="no reward models"):
        GapMonitor(cfg, members, [])
    with pytest.raises(ValueError, match="uncertainty_coef must be >= 0"):
        EnsembleScorer(cfg, members, uncertainty_coef=-1.0)


def test_monitor_logged_and_stop_rule_in_a_tiny_ppo_run(setup):
    cfg, base, members, *_ = setup
    config = PPOConfig(batch_size=8, mini_batch_size=8, critic_init="reward", sampling=SamplingConfig(max_new_tokens=6),
                       kl_coef=0.05, policy_lora=LoraConfig(rank=2, alpha=4.0), optim=OptimConfig(learning_rate=3e-3),
                       run=RunConfig(max_steps=6, progress=False))
    reward = EnsembleScorer(cfg, members[:2], uncertainty_coef=0.5)
    monitors = {"gap": GapMonitor(cfg, members[:2], members[2:]), "words": lambda ps, cs: [len(c.split()) for c in cs]}
    res = train_ppo(cfg, base, tiny_tokenizer(), tiny_prompts(32), reward, config, monitors=monitors,
                    stop=metric_stop("step", 2.0, window=1, name="step rule"))
    rows = res.history
    assert len(rows) == 3 and res.stop_reason == "step rule (2.000 >= 2.0)"  # the stop hook ended it
    for r in rows:
        # the batch means are linear: gap = optimised - held out; score = mean - 0.5 * std
        assert r["gap"] == pytest.approx(r["gap/optimised"] - r["gap/held_out"], abs=1e-5)
        assert r["score"] == pytest.approx(r["reward/mean"] - 0.5 * r["reward/std"], abs=1e-5)
        assert r["gap/optimised"] == pytest.approx(r["reward/mean"], abs=1e-5)  # the same members, same rollouts
        assert r["words"] >= 0 and {"reward/member_0", "reward/member_1", "gap/held_out_std"} <= set(r)


def test_clipped_ensemble_reward_in_a_tiny_ppo_run(setup):
    """A capped RL reward (the demo's ``reward_clip``): the critic still starts from the ensemble's
    first member, every step's score respects the cap, the unclipped score and the members are logged."""
    cfg, base, members, *_ = setup
    config = PPOConfig(batch_size=8, mini_batch_size=8, critic_init="reward", sampling=SamplingConfig(max_new_tokens=6),
                       kl_coef=0.05, policy_lora=LoraConfig(rank=2, alpha=4.0), optim=OptimConfig(learning_rate=3e-3),
                       run=RunConfig(max_steps=2, progress=False))
    reward = ClippedScorer(EnsembleScorer(cfg, members[:2], uncertainty_coef=0.5), high=-0.1)
    rows = train_ppo(cfg, base, tiny_tokenizer(), tiny_prompts(32), reward, config).history
    assert len(rows) == 2
    for r in rows:
        assert r["score"] <= -0.1 + 1e-6 and r["score"] <= r["reward/unclipped"] + 1e-6
        assert r["reward/unclipped"] == pytest.approx(r["reward/mean"] - 0.5 * r["reward/std"], abs=1e-5)
        assert 0.0 <= r["reward/clipped"] <= 1.0 and "reward/member_1" in r
