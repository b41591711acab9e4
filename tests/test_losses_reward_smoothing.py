"""Label smoothing of the reward losses, worked by hand.

With smoothing e the pairwise term is ``-(1 - e) log s(z) - e log s(-z)``. Since
``-log s(-z) = z - log s(z)``, that is ``-log s(z) + e z``: the plain loss plus ``e`` times the
logit, whose gradient ``-(1 - s(z)) + e`` vanishes at ``s(z) = 1 - e``, ``z = log((1 - e) / e)``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses as L

S1 = -math.log(1 / (1 + math.exp(-1)))  # -log sigmoid(1) = 0.313262
S2 = -math.log(1 / (1 + math.exp(-2)))  # -log sigmoid(2) = 0.126928


def test_bradley_terry_smoothing_by_hand():
    loss, m = L.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0]), label_smoothing=0.1)
    # z = 1: 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262 = S1 + 0.1 * 1
    np.testing.assert_allclose(float(loss), S1 + 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(m["bt_loss"]), 0.413262, rtol=1e-5)
    assert float(m["accuracy"]) == 1.0
    # with a margin 0.5 the logit is z = 0.5: -log s(0.5) + 0.1 * 0.5 = 0.474077 + 0.05
    loss, _ = L.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0]), margin=0.5, label_smoothing=0.1)
    np.testing.assert_allclose(float(loss), -math.log(1 / (1 + math.exp(-0.5))) + 0.05, rtol=1e-6)
    # two pairs, z = 1 and z = -2: mean of (S1 + 0.2 * 1) and (-log s(-2) + 0.2 * -2) = (2 + S2) - 0.4
    loss, _ = L.bradley_terry_loss(jnp.array([2.0, 0.0]), jnp.array([1.0, 2.0]), label_smoothing=0.2)
    np.testing.assert_allclose(float(loss), ((S1 + 0.2) + (2 + S2 - 0.4)) / 2, rtol=1e-6)


def test_smoothing_bounds_the_optimum():
    """The smoothed loss is minimal at z = log 9 for e = 0.1 (the unsmoothed one keeps falling)."""
    grad = jax.grad(lambda z: L.bradley_terry_loss(z, jnp.zeros(1), label_smoothing=0.1)[0])
    np.testing.assert_allclose(float(grad(jnp.array([math.log(9.0)]))[0]), 0.0, atol=1e-7)
    assert float(grad(jnp.array([1.0]))[0]) < 0 < float(grad(jnp.array([3.0]))[0])
    plain = jax.grad(lambda z: L.bradley_terry_loss(z, jnp.zeros(1))[0])
    assert float(plain(jnp.array([10.0]))[0]) < 0


def test_ranking_smoothing_by_hand():
    # ranks 1, 2, 3 with scores 3, 2, 1: pairs with z = 1, 2, 1; each term gains 0.1 * z
    loss, m = L.ranking_loss(jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[1, 2, 3]]), label_smoothing=0.1)
    np.testing.assert_allclose(float(loss), (2 * S1 + S2) / 3 + 0.1 * 4 / 3, rtol=1e-6)
    assert float(m["num_pairs"]) == 3.0


def test_smoothing_zero_is_the_plain_loss_and_bad_values_refused():
    rc, rr = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.1, 0.4, -0.5])
    np.testing.assert_array_equal(L.bradley_terry_loss(rc, rr, label_smoothing=0.0)[0], L.bradley_terry_loss(rc, rr)[0])
    for bad in (-0.1, 0.5, 1.0):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            L.bradley_terry_loss(rc, rr, label_smoothing=bad)
