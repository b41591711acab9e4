"""Per-token RLHF rewards, the whole PPO objective, and shapes checked at the door of every loss."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses as L


def test_kl_shaped_rewards_hand_worked():
    kl = jnp.array([[0.5, 0.0, 0.5], [0.0, -0.5, 123.0]])  # row 1: the last slot is padding (garbage)
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    # r_t = -0.1 KL_t, and the score on the last real token (t = 2 in row 0, t = 1 in row 1)
    expected = [[-0.05, 0.0, -0.05 + 2.0], [0.0, 0.05 - 1.0, 0.0]]
    np.testing.assert_allclose(L.kl_shaped_rewards(kl, jnp.array([2.0, -1.0]), mask, beta=0.1), expected, atol=1e-7)
    # a row with no real token gets no score
    np.testing.assert_array_equal(L.last_token_onehot(jnp.array([[0, 0], [0, 1]])), [[0.0, 0.0], [0.0, 1.0]])


def test_ppo_loss_is_policy_plus_weighted_value_minus_entropy():
    rng = np.random.default_rng(0)
    shape = (3, 5)
    logp, old, adv, v, old_v, ret, ent = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(7))
    mask = jnp.asarray(rng.integers(0, 2, size=shape))
    pg, _ = L.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    vf, _ = L.ppo_value_loss(v, old_v, ret, mask, clip_eps=0.3)
    mean_h = L.masked_mean(ent, mask)
    loss, m = L.ppo_loss(logp, old, adv, v, old_v, ret, mask, entropy=ent, clip_eps=0.2, value_clip_eps=0.3,
                         vf_coef=0.25, entropy_coef=0.01)
    np.testing.assert_allclose(loss, pg + 0.25 * vf - 0.01 * mean_h, rtol=1e-6)
    assert {"policy_loss", "value_loss", "entropy", "clip_frac", "loss"} <= set(m)
    with pytest.raises(ValueError, match="entropy_coef"):
        L.ppo_loss(logp, old, adv, v, old_v, ret, mask, entropy_coef=0.1)


def test_a_mask_of_the_wrong_shape_fails_loudly():
    x = jnp.zeros((2, 3))
    bad = jnp.ones((2, 1))  # would broadcast silently
    for call in (lambda: L.ppo_policy_loss(x, x, x, bad), lambda: L.ppo_value_loss(x, x, x, bad),
                 lambda: L.kl_loss(x, x, bad), lambda: L.gae(x, x, bad), lambda: L.entropy_loss(x, bad),
                 lambda: L.kl_shaped_rewards(x, jnp.zeros(2), bad, beta=0.1),
                 lambda: L.kl_penalty(x, jnp.zeros((2, 1))),
                 lambda: L.bradley_terry_loss(jnp.zeros(3), jnp.zeros(2)),
                 lambda: L.dpo_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.zeros(2), beta=0.1),
                 lambda: L.ranking_loss(jnp.zeros((2, 3)), jnp.zeros((2, 2), int))):
        with pytest.raises(AssertionError):
            call()
