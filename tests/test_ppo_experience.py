"""PPO's experience pass and options, worked by hand on a 2 x 3 rollout (arrays in, advantages
out: no model), then each PPO option through the real step on a tiny model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.train import FitContext, OptimConfig, PPOConfig, advantages_from_arrays, prepare_ppo
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer

# Row 0 generated 3 tokens, row 1 two (its third slot is padding and holds garbage).
LOGP = jnp.array([[-1.0, -2.0, -0.5], [-0.5, -1.5, 7.0]])
REF = jnp.array([[-1.5, -2.0, -1.0], [-0.5, -1.0, -9.0]])
VALUES = jnp.array([[0.2, 0.4, 0.6], [0.1, -0.3, 9.9]])
SCORES = jnp.array([1.0, -1.0])
MASK = jnp.array([[1, 1, 1], [1, 1, 0]])
EOS = jnp.array([True, True])
CONFIG = PPOConfig(lam=0.5, gamma=1.0, whiten_advantages=False, kl_estimator="k1")


def test_hand_worked_rewards_advantages_and_returns():
    out = advantages_from_arrays(LOGP, REF, VALUES, SCORES, MASK, EOS, beta=0.1, config=CONFIG)
    # k1 KL = logp - ref on real tokens: row 0 [0.5, 0, 0.5], row 1 [0, -0.5, (pad) 0]
    np.testing.assert_allclose(out.kl, [[0.5, 0.0, 0.5], [0.0, -0.5, 0.0]], atol=1e-7)
    # r_t = -0.1 KL_t, plus the score on the last real token:
    #   row 0: [-0.05, 0, -0.05 + 1.0]      row 1: [0, 0.05 - 1.0, (pad) 0]
    np.testing.assert_allclose(out.rewards, [[-0.05, 0.0, 0.95], [0.0, -0.95, 0.0]], atol=1e-7)
    # GAE, gamma 1, lambda 0.5 (delta_t = r_t + V_{t+1} - V_t, V after the last real token = 0):
    #   row 0: d2 = 0.95 - 0.6 = 0.35            A2 = 0.35
    #          d1 = 0 + 0.6 - 0.4 = 0.2          A1 = 0.2 + 0.5 * 0.35 = 0.375
    #          d0 = -0.05 + 0.4 - 0.2 = 0.15     A0 = 0.15 + 0.5 * 0.375 = 0.3375
    #   row 1: d1 = -0.95 - (-0.3) = -0.65       A1 = -0.65
    #          d0 = 0 + (-0.3) - 0.1 = -0.4      A0 = -0.4 + 0.5 * -0.65 = -0.725
    np.testing.assert_allclose(out.advantages, [[0.3375, 0.375, 0.35], [-0.725, -0.65, 0.0]], atol=1e-6)
    # returns R = A + V: row 0 [0.5375, 0.775, 0.95], row 1 [-0.625, -0.95, (pad) 0]
    np.testing.assert_allclose(out.returns, [[0.5375, 0.775, 0.95], [-0.625, -0.95, 0.0]], atol=1e-6)


def test_whitened_advantages_and_rewards_match_numpy():
    raw = advantages_from_arrays(LOGP, REF, VALUES, SCORES, MASK, EOS, beta=0.1, config=CONFIG)
    white = advantages_from_arrays(LOGP, REF, VALUES, SCORES, MASK, EOS, beta=0.1,
                                   config=dataclasses.replace(CONFIG, whiten_advantages=True))
    a = np.asarray(raw.advantages)[np.asarray(MASK) > 0]  # the 5 real tokens
    expected = (a - a.mean()) / np.sqrt(a.var(ddof=1) + 1e-8)  # unbiased variance, as TRL
    np.testing.assert_allclose(np.asarray(white.advantages)[np.asarray(MASK) > 0], expected, rtol=1e-5)
    assert float(white.advantages[1, 2]) == 0.0  # padding stays 0
    wr = advantages_from_arrays(LOGP, REF, VALUES, SCORES, MASK, EOS, beta=0.1,
                                config=dataclasses.replace(CONFIG, whiten_rewards=True))
    r = np.asarray(raw.rewards)[np.asarray(MASK) > 0]
    # whitened without shifting the mean: r / std (the mean is added back)
    np.testing.assert_allclose(np.asarray(wr.rewards)[np.asarray(MASK) > 0],
                               (r - r.mean()) / np.sqrt(r.var(ddof=1) + 1e-8) + r.mean(), rtol=1e-5)


def test_missing_eos_penalty_lowers_only_the_cut_rows_score():
    config = dataclasses.replace(CONFIG, missing_eos_penalty=0.5)
    out = advantages_from_arrays(LOGP, REF, VALUES, SCORES, MASK, jnp.array([True, False]), beta=0.1, config=config)
    np.testing.assert_allclose(out.scores, [1.0, -1.5])
    np.testing.assert_allclose(out.rewards[1, 1], 0.05 - 1.5, atol=1e-7)  # -0.1 * -0.5 + (-1.5)
    np.testing.assert_allclose(out.rewards[0], [-0.05, 0.0, 0.95], atol=1e-7)


@pytest.fixture(scope="module")
def tiny():
    cfg, tok = tiny_config(), tiny_tokenizer()
    return cfg, tok, tiny_base(cfg)


def _first_step(tiny, **changes):
    """One PPO step (one epoch, one minibatch: every metric is taken at the initial weights) on the
    same rollout and scores."""
    cfg, tok, base = tiny
    kw = dict(batch_size=8, mini_batch_size=8, ppo_epochs=1, critic_init="zero",
              sampling=SamplingConfig(max_new_tokens=6), policy_lora=LoraConfig(rank=2),
              critic_lora=LoraConfig(rank=2), optim=OptimConfig(learning_rate=1e-3))
    config = PPOConfig(**dict(kw, **changes))
    run = prepare_ppo(cfg, base, tok, tiny_prompts(16), lambda p, c: [len(x) / 10 for x in c], config)
    batch, _ = run.batches(0, FitContext(run.state, base, None))
    return jax.jit(run.algorithm.step)(run.state, base, batch)[1]


def test_entropy_and_value_coefficients_enter_the_loss(tiny):
    plain = _first_step(tiny, vf_coef=0.1)
    bonus = _first_step(tiny, vf_coef=0.1, entropy_coef=0.5)
    heavy = _first_step(tiny, vf_coef=0.6)
    # loss = policy + vf_coef * value - entropy_coef * entropy, all at the same (initial) weights
    np.testing.assert_allclose(bonus["loss"], plain["loss"] - 0.5 * plain["entropy"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heavy["loss"], plain["loss"] + 0.5 * plain["value_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain["loss"], plain["policy_loss"] + 0.1 * plain["value_loss"], rtol=1e-5, atol=1e-6)


def test_unclipped_value_loss_never_clips(tiny):
    # two epochs of one minibatch: the second update sees values that moved away from the old ones
    tight = _first_step(tiny, ppo_epochs=2, value_clip_eps=1e-6, optim=OptimConfig(learning_rate=3e-2))
    free = _first_step(tiny, ppo_epochs=2, value_clip_eps=None, optim=OptimConfig(learning_rate=3e-2))
    assert float(tight["value_clip_frac"]) > 0.0 and float(free["value_clip_frac"]) == 0.0


def test_max_prompt_length_keeps_the_last_tokens(tiny, capsys):
    cfg, tok, base = tiny
    prompts = ["w1 w2 w3 w4 w5", "w6 w7", "w8"] * 3
    config = PPOConfig(batch_size=8, mini_batch_size=8, critic_init="zero", max_prompt_length=2,
                       sampling=SamplingConfig(max_new_tokens=4))
    run = prepare_ppo(cfg, base, tok, prompts, lambda p, c: [0.0] * len(c), config)
    assert run.prompts.batch.tokens.shape[1] == 2 and run.prompts.truncated == 3
    assert tok.decode(run.prompts.batch.tokens[0]) == "w4 w5"  # the end of the prompt is kept
    err = capsys.readouterr().err
    assert "3 truncated" in err and "prompts longer than 2 tokens keep their last ones" in err


def test_bad_scores_skip_every_update_of_the_step(tiny):
    cfg, tok, base = tiny
    config = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, critic_init="zero",
                       sampling=SamplingConfig(max_new_tokens=4), reward_bound=100.0)
    for bad in (np.nan, 1e30):
        run = prepare_ppo(cfg, base, tok, tiny_prompts(16), lambda p, c: [bad] + [0.0] * (len(c) - 1), config)
        batch, _ = run.batches(0, FitContext(run.state, base, None))
        state, m = jax.jit(run.algorithm.step)(run.state, base, batch)
        assert int(m["skipped"]) == int(m["updates"]) == 4 and int(m["bad_scores"]) == 1
        jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.params),
                               jax.device_get(run.state.params))
        assert float(state.kl.beta) == float(run.state.kl.beta)
    with pytest.raises(ValueError, match="PPOConfig.batch_size must be a multiple of mini_batch_size"):
        PPOConfig(batch_size=6, mini_batch_size=4)
