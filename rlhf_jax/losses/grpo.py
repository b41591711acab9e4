"""GRPO: group-normalised advantages and the clipped surrogate with a KL loss term, in the four
aggregations TRL 1.12 calls ``grpo``, ``bnpo``, ``dr_grpo`` and ``dapo``.

Shao et al. 2024, "DeepSeekMath" (GRPO); Liu et al. 2025, "Understanding R1-Zero-Like Training"
(Dr. GRPO: no std scaling, a constant normaliser); Yu et al. 2025, "DAPO" (clip-higher, a
token-level normaliser). A batch holds ``P`` prompts x ``G`` completions, the ``G`` rows of a
prompt contiguous: ``N = P * G`` rows, row ``i`` in group ``i // G``.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Shaped

from rlhf_jax.losses.kl import Estimator, kl_loss
from rlhf_jax.losses.masked import as_float
from rlhf_jax.losses.ppo import ppo_policy_loss

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
RewardScale = Literal["group", "batch", "none"]
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")

__all__ = ["LOSS_TYPES", "LossType", "RewardScale", "group_advantages", "grpo_loss", "zero_variance_groups"]


def _groups(x: Float[Array, "N"], group_size: int) -> Float[Array, "P G"]:
    chex.assert_rank(x, 1)
    if group_size < 1 or x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows do not split into groups of {group_size} (rows of a prompt are "
                         "contiguous: N = prompts * group_size)")
    return as_float(x).reshape(-1, group_size)


def _std(x: Array, axis=None) -> Array:
    """Unbiased (Bessel) standard deviation; 0 for a single value (TRL's ``nanstd`` gives NaN
    there, never reached in training)."""
    n = x.size if axis is None else x.shape[axis]
    if n < 2:
        return jnp.zeros_like(jnp.mean(x, axis=axis, keepdims=True))
    return jnp.std(x, axis=axis, keepdims=True, ddof=1)


def group_advantages(
    scores: Float[Array, "N"],
    *,
    group_size: int,
    scale: RewardScale = "group",
    eps: float = 1e-4,
) -> Float[Array, "N"]:
    """GRPO's advantage of each completion from the scores of its group of ``G`` samples:

        A_i = (r_i - mean_g r) / (std_g r + eps)      scale="group"   (GRPO, Shao et al. 2024)
        A_i = (r_i - mean_g r) / (std_B r + eps)      scale="batch"   (the std of the whole batch)
        A_i =  r_i - mean_g r                         scale="none"    (Dr. GRPO, Liu et al. 2025)

    ``mean_g`` / ``std_g`` over the group of row ``i``; standard deviations are unbiased (Bessel's
    correction), and ``eps`` is added to the std, not the variance (TRL 1.12's choices). A group
    whose scores are all equal gets ``A = 0`` on every row (see :func:`zero_variance_groups`).

    Args:
      scores: ``[N]`` scores, ``N = prompts * group_size``, each prompt's rows contiguous.
      group_size: ``G``, completions per prompt.
      scale: ``"group"``, ``"batch"`` or ``"none"``.
      eps: added to the standard deviation.

    Returns:
      ``[N]`` float32 advantages (one per completion; broadcast over its tokens).
    """
    g = _groups(scores, group_size)
    centred = g - jnp.mean(g, axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (_std(g, axis=1) + eps)
    elif scale == "batch":
        centred = centred / (_std(g) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred.reshape(-1)


def zero_variance_groups(scores: Float[Array, "N"], *, group_size: int, atol: float = 1e-8) -> Bool[Array, "P"]:
    """``[P]`` True for each group whose ``G`` scores are all equal (std <= ``atol``, TRL's
    ``isclose(std, 0)``): every advantage of such a group is 0, it teaches nothing; count it, or
    drop its rows from the loss (DAPO's dynamic sampling drops and resamples them)."""
    g = _groups(scores, group_size)
    return jnp.squeeze(_std(g, axis=1), 1) <= atol


def _row_advantages(advantages: Array, logp: Array) -> Array:
    adv = as_float(advantages)
    if adv.ndim == 1:
        chex.assert_equal_shape_prefix([adv, logp], 1)
        adv = adv[:, None]
    return jnp.broadcast_to(adv, logp.shape)


def grpo_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B"] | Float[Array, "B T"],
    mask: Shaped[Array, "B T"],
    *,
    ref_logp: Float[Array, "B T"] | None = None,
    beta: float = 0.0,
    kl_estimator: Estimator = "k3",
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    loss_type: LossType = "dapo",
    num_tokens: float | Array | None = None,
    num_sequences: float | Array | None = None,
    max_completion_length: int | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """GRPO's objective on one (mini)batch. Per token, with ``r_t = exp(logp_t - old_logp_t)``:

        l_t = -min(r_t A, clip(r_t, 1 - eps, 1 + eps_high) A) + beta * KL_t

    (``KL_t`` the k1/k2/k3 estimate of KL(pi || pi_ref) on the sampled token, k3 by default:
    ``exp(ref - logp) - (ref - logp) - 1``), then, over the real tokens ``m``:

        grpo:    L = (1 / S) sum_i (1 / |o_i|) sum_t l_it     S = num_sequences  (sequence level)
        bnpo:    L = sum_it l_it / sum_it m_it                 this minibatch's tokens
        dr_grpo: L = sum_it l_it / (S * L_max)                 L_max = max_completion_length
        dapo:    L = sum_it l_it / N_tok                       N_tok = num_tokens  (token level)

    ``grpo``, ``dr_grpo`` and ``dapo`` are independent of how a batch is split: pass the whole
    batch's counts (``num_sequences``, ``num_tokens``; a trainer taking ``M`` updates per pass
    passes them divided by ``M``) and the minibatches' gradients add up to the whole batch's.
    ``bnpo`` normalises by the minibatch's own token count (TRL's definition: the result
    depends on the split). Without the counts each defaults to this minibatch's (``S`` = rows,
    ``N_tok`` = real tokens, ``L_max`` = ``T``), which is TRL's loss on one micro-batch. The
    surrogate and KL terms are :func:`rlhf_jax.losses.ppo_policy_loss` and
    :func:`rlhf_jax.losses.kl_loss`, rescaled to these normalisers; ratios and KL in float32.

    Args:
      logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (gradient).
      old_logp: ``[B, T]`` log-probs under the policy that sampled them (constant; pass
        ``stop_gradient(logp)`` for the first, on-policy update).
      advantages: ``[B]`` per completion (GRPO, RLOO) or ``[B, T]`` per token (REINFORCE++).
      mask: ``[B, T]`` completion mask, bool or 0/1 float.
      ref_logp: ``[B, T]`` reference log-probs; needed when ``beta != 0``.
      beta: KL coefficient.
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      clip_eps, clip_eps_high: the clip range ``[1 - eps, 1 + eps_high]`` (``eps_high`` defaults
        to ``eps``; DAPO's clip-higher uses 0.28).
      loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"``.
      num_tokens, num_sequences, max_completion_length: the normalisers above.

    Returns:
      ``(loss, metrics)``: ``loss``, ``policy_loss`` (the surrogate alone, same normaliser),
      ``kl`` (token mean of ``KL_t``, when ``ref_logp`` is given), ``kl_per_sequence``, and the
      surrogate's ``clip_frac``, ``approx_kl``, ``ratio_mean/min/max``, ``advantage_mean``.
    """
    chex.assert_rank([logp, old_logp, mask], 2)
    chex.assert_equal_shape([logp, old_logp, mask])
    if beta and ref_logp is None:
        raise ValueError("grpo_loss: beta is set but no ref_logp was given")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    adv = _row_advantages(advantages, logp)
    keep = jnp.asarray(mask) != 0
    rows, width = logp.shape
    local_tokens = jnp.sum(keep, dtype=jnp.float32)
    rows_with_tokens = jnp.sum(jnp.any(keep, axis=1), dtype=jnp.float32)
    seqs = rows if num_sequences is None else num_sequences
    if loss_type == "grpo":  # the mean over sequences of per-sequence token means
        aggregation, count, norm = "sequence", rows_with_tokens, seqs
    else:  # a token sum over a normaliser
        aggregation, count = "token", local_tokens
        norm = {"bnpo": local_tokens,
                "dr_grpo": seqs * (width if max_completion_length is None else max_completion_length),
                "dapo": local_tokens if num_tokens is None else num_tokens}[loss_type]
    norm = jnp.asarray(norm, jnp.float32)
    # ppo_policy_loss / kl_loss return the mean over `count` items; times count / norm = sum / norm
    rescale = jnp.where(norm > 0, count / jnp.where(norm > 0, norm, 1.0), 0.0)
    pg, metrics = ppo_policy_loss(logp, old_logp, adv, mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
                                  aggregation=aggregation)
    pg = pg * rescale
    loss = pg
    metrics = dict(metrics, policy_loss=pg)
    if ref_logp is not None:
        chex.assert_equal_shape([logp, ref_logp])
        ref_logp = jax.lax.stop_gradient(ref_logp)
        kl, kl_m = kl_loss(logp, ref_logp, mask, estimator=kl_estimator, aggregation=aggregation)
        if beta:
            loss = loss + beta * kl * rescale
        if aggregation != "token":  # the metric is the token mean whatever the loss type
            kl_m = kl_loss(logp, ref_logp, mask, estimator=kl_estimator)[1]
        metrics.update(kl=kl_m["kl"], kl_per_sequence=kl_m["kl_per_sequence"])
    metrics["loss"] = loss
    return loss, jax.lax.stop_gradient(metrics)
