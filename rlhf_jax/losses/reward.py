"""Reward-model losses on scalar scores: pairwise Bradley-Terry, K-way ranking, best-of-K.

All of these average over *sequences* (pairs or prompts), never over tokens: a reward model emits
one scalar per sequence.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Shaped

from rlhf_jax.losses.masked import as_float, masked_mean

__all__ = ["bradley_terry_loss", "ranking_loss", "best_of_k_loss"]

_NEG = -1e30  # stands in for -inf in masked logits without producing NaN in logsumexp


def _all_true(x: Array) -> Array:
    return jnp.ones(jnp.shape(x), dtype=bool)


def _smoothed_nll(z: Array, eps: float) -> Array:
    """``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`` (``eps = 0``: ``-log sigmoid(z)``)."""
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {eps}")
    nll = -jax.nn.log_sigmoid(z)
    return nll if eps == 0.0 else (1.0 - eps) * nll - eps * jax.nn.log_sigmoid(-z)


def bradley_terry_loss(
    r_chosen: Float[Array, "B"],
    r_rejected: Float[Array, "B"],
    mask: Shaped[Array, "B"] | None = None,
    *,
    margin: float | Float[Array, "B"] | None = None,
    center_coef: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Pairwise Bradley-Terry reward-model loss, mean over pairs.

        L = mean_b [-(1 - e) log sigmoid(z_b) - e log sigmoid(-z_b)] + c * mean_b [(r_c + r_r)^2]
        z_b = r_c - r_r - m

    The first term is the negative log-likelihood of the preference under the Bradley-Terry model
    (Bradley & Terry 1952; Stiennon et al. 2020; Ouyang et al. 2022). ``m`` is an optional margin
    (Llama 2, Touvron et al. 2023: larger for stronger preferences). ``e = label_smoothing`` says
    each label is wrong with probability ``e`` (the cross-entropy against the soft target
    ``1 - e``, as cDPO does for DPO): the loss is then smallest at ``z = log((1 - e) / e)``
    instead of growing without bound, so a reward model cannot drive its training pairs to
    certainty (e = 0.1: the optimum is z = log 9 = 2.197). The second term, with coefficient
    ``c = center_coef``, keeps rewards centred on 0 (Eisenstein et al. 2023, as in TRL's
    ``center_rewards_coefficient``).

    Args:
      r_chosen: ``[B]`` scores of the preferred completions.
      r_rejected: ``[B]`` scores of the other completions.
      mask: optional ``[B]`` validity of each pair (for padded batches); default all valid.
      margin: scalar or ``[B]`` margin ``m``; ``None`` means 0.
      center_coef: coefficient ``c`` of the centring term.
      label_smoothing: ``e`` in ``[0, 0.5)``; 0 is the plain Bradley-Terry loss.

    Returns:
      ``(loss, metrics)`` with metrics ``bt_loss`` (the first term), ``center_loss`` (the
      un-weighted second term), ``accuracy`` (fraction with ``r_c > r_r``; ties count as wrong),
      ``margin`` (mean of ``r_c - r_r``), ``chosen_mean``, ``rejected_mean``.
    """
    chex.assert_rank([r_chosen, r_rejected], 1)
    chex.assert_equal_shape([r_chosen, r_rejected] + ([] if mask is None else [mask]))
    if margin is not None and jnp.ndim(margin):
        chex.assert_equal_shape([r_chosen, margin])
    rc, rr = as_float(r_chosen), as_float(r_rejected)
    if mask is None:
        mask = _all_true(rc)
    keep = jnp.asarray(mask) != 0
    rc, rr = jnp.where(keep, rc, 0.0), jnp.where(keep, rr, 0.0)  # padding may hold garbage
    diff = rc - rr
    logits = diff if margin is None else jnp.where(keep, diff - as_float(margin), 0.0)
    bt = masked_mean(_smoothed_nll(logits, label_smoothing), mask)
    center = masked_mean(jnp.square(rc + rr), mask)
    loss = bt + center_coef * center
    metrics = {
        "bt_loss": bt,
        "center_loss": center,
        "accuracy": masked_mean(diff > 0, mask),
        "margin": masked_mean(diff, mask),
        "chosen_mean": masked_mean(rc, mask),
        "rejected_mean": masked_mean(rr, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


def ranking_loss(
    scores: Float[Array, "B K"],
    ranks: Int[Array, "B K"],
    valid: Shaped[Array, "B K"] | None = None,
    *,
    label_smoothing: float = 0.0,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """InstructGPT K-way ranking loss (Ouyang et al. 2022, eq. 1), mean over prompts.

        L = mean_b [ 1 / |P_b| * sum_{(i, j) in P_b} -log sigmoid(s_bi - s_bj) ]

    where ``P_b`` is the set of strictly ordered pairs of valid completions of prompt ``b``,
    ``rank_i < rank_j`` (rank 1 is best; equal ranks are ties and form no pair). For a full
    ranking of K completions ``|P_b| = C(K, 2)``, InstructGPT's normalisation: all pairs of a
    prompt count as a single batch element, so a prompt does not weigh more because it has more
    comparisons. Prompts without any pair are left out of the mean.

    Args:
      scores: ``[B, K]`` reward-model scores of K completions per prompt.
      ranks: ``[B, K]`` integer ranks, 1 = best, ties allowed.
      valid: optional ``[B, K]`` mask of real completions (K may be padded); default all valid.
      label_smoothing: ``e`` in ``[0, 0.5)``: each ordered pair's term becomes
        ``-(1 - e) log sigmoid(s_bi - s_bj) - e log sigmoid(s_bj - s_bi)``, as in
        :func:`bradley_terry_loss`.

    Returns:
      ``(loss, metrics)`` with metrics ``accuracy`` (fraction of all ordered pairs scored in the
      right order, ties in score count as wrong) and ``num_pairs`` (total ordered pairs).
    """
    chex.assert_rank(scores, 2)
    chex.assert_equal_shape([scores, ranks] + ([] if valid is None else [valid]))
    s = as_float(scores)
    if valid is None:
        valid = _all_true(s)
    v = jnp.asarray(valid) != 0
    ranks = jnp.asarray(ranks)
    s = jnp.where(v, s, 0.0)  # padding may hold garbage; keep it out of the backward pass
    # better[b, i, j]: completion i is strictly preferred to completion j, both valid.
    better = (ranks[:, :, None] < ranks[:, None, :]) & v[:, :, None] & v[:, None, :]
    diff = s[:, :, None] - s[:, None, :]
    pair_loss = _smoothed_nll(diff, label_smoothing)
    per_prompt = masked_mean(pair_loss, better, axis=(1, 2))
    has_pairs = jnp.any(better, axis=(1, 2))
    loss = masked_mean(per_prompt, has_pairs)
    metrics = {
        "accuracy": masked_mean(diff > 0, better),
        "num_pairs": jnp.sum(better).astype(jnp.float32),
    }
    return loss, jax.lax.stop_gradient(metrics)


def best_of_k_loss(
    scores: Float[Array, "B K"],
    best_index: Int[Array, "B"],
    valid: Shaped[Array, "B K"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Best-of-K reward-model loss: softmax cross-entropy picking the preferred completion.

        L = mean_b [ -log softmax_k(s_bk over valid k)[best_b] ]

    the K-way Plackett-Luce / Bradley-Terry generalisation that only uses the top choice
    (e.g. Stiennon et al. 2020 for K > 2; Ziegler et al. 2019 used 4-way choices). Mean over
    prompts that have at least one valid completion.

    Args:
      scores: ``[B, K]`` reward-model scores.
      best_index: ``[B]`` index in ``[0, K)`` of the chosen completion (must be valid).
      valid: optional ``[B, K]`` mask of real completions; default all valid.

    Returns:
      ``(loss, metrics)`` with metrics ``accuracy`` (fraction of prompts whose top-scored valid
      completion is the chosen one).
    """
    chex.assert_rank([scores, best_index], [2, 1])
    chex.assert_equal_shape_prefix([scores, best_index], 1)
    if valid is not None:
        chex.assert_equal_shape([scores, valid])
    s = as_float(scores)
    if valid is None:
        valid = _all_true(s)
    v = jnp.asarray(valid) != 0
    logits = jnp.where(v, s, _NEG)
    logp = jax.nn.log_softmax(logits, axis=-1)
    idx = jnp.asarray(best_index).astype(jnp.int32)[:, None]
    nll = -jnp.take_along_axis(logp, idx, axis=-1, mode="clip")[:, 0]
    has_any = jnp.any(v, axis=-1)
    loss = masked_mean(nll, has_any)
    metrics = {"accuracy": masked_mean(jnp.argmax(logits, axis=-1) == idx[:, 0], has_any)}
    return loss, jax.lax.stop_gradient(metrics)
