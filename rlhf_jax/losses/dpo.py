"""Direct preference optimisation losses on sequence log-probabilities: DPO and IPO.

Both average over *pairs* (sequences). They take the sequence log-probs ``log pi(y | x)`` of the
chosen and rejected completions under the policy and the frozen reference; get them with
:func:`rlhf_jax.losses.token_logprobs` + :func:`rlhf_jax.losses.sequence_logprobs`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from rlhf_jax.losses.masked import as_float, masked_mean

__all__ = ["dpo_loss", "ipo_loss"]


def _log_ratios(pc, pr, rc, rr, mask):
    chex.assert_rank([pc, pr, rc, rr], 1)
    chex.assert_equal_shape([pc, pr, rc, rr] + ([] if mask is None else [mask]))
    pc, pr, rc, rr = (as_float(a) for a in (pc, pr, rc, rr))
    keep = jnp.ones(pc.shape, bool) if mask is None else jnp.asarray(mask) != 0
    chosen = jnp.where(keep, pc - rc, 0.0)  # padding may hold garbage; keep it out of the grads
    rejected = jnp.where(keep, pr - rr, 0.0)
    return chosen, rejected, keep


def _metrics(chosen, rejected, keep, beta):
    rew_c, rew_r = beta * chosen, beta * rejected
    return {
        "rewards_chosen": masked_mean(rew_c, keep),
        "rewards_rejected": masked_mean(rew_r, keep),
        "reward_accuracy": masked_mean(rew_c > rew_r, keep),
        "reward_margin": masked_mean(rew_c - rew_r, keep),
    }


def dpo_loss(
    policy_chosen_logp: Float[Array, "B"],
    policy_rejected_logp: Float[Array, "B"],
    ref_chosen_logp: Float[Array, "B"],
    ref_rejected_logp: Float[Array, "B"],
    mask: Shaped[Array, "B"] | None = None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """DPO loss, sigmoid form, mean over pairs (Rafailov et al. 2023, "Direct Preference
    Optimization: Your Language Model is Secretly a Reward Model", eq. 7).

        h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
        L = mean_b [ -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h) ]

    ``e = label_smoothing`` is the conservative DPO (cDPO, Mitchell 2023) probability that a label
    is flipped; ``e = 0`` is plain DPO (TRL's ``loss_type="sigmoid"``).

    Args:
      policy_chosen_logp: ``[B]`` policy sequence log-probs of the chosen completions.
      policy_rejected_logp: ``[B]`` policy sequence log-probs of the rejected completions.
      ref_chosen_logp: ``[B]`` reference sequence log-probs of the chosen completions.
      ref_rejected_logp: ``[B]`` reference sequence log-probs of the rejected completions.
      mask: optional ``[B]`` validity of each pair; default all valid.
      beta: inverse temperature of the implicit reward (typically 0.1).
      label_smoothing: ``e`` in ``[0, 0.5)``.

    Returns:
      ``(loss, metrics)`` with metrics ``rewards_chosen`` / ``rewards_rejected`` (mean implicit
      rewards ``beta * (log pi - log pi_ref)``), ``reward_accuracy`` (fraction with chosen reward
      > rejected reward), ``reward_margin`` (mean difference).
    """
    chosen, rejected, keep = _log_ratios(
        policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, mask
    )
    z = beta * (chosen - rejected)
    per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
    loss = masked_mean(per_pair, keep)
    return loss, jax.lax.stop_gradient(_metrics(chosen, rejected, keep, beta))


def ipo_loss(
    policy_chosen_logp: Float[Array, "B"],
    policy_rejected_logp: Float[Array, "B"],
    ref_chosen_logp: Float[Array, "B"],
    ref_rejected_logp: Float[Array, "B"],
    mask: Shaped[Array, "B"] | None = None,
    *,
    beta: float,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """IPO loss, mean over pairs (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", eq. 17, with ``tau = beta``).

        h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
        L = mean_b (h - 1 / (2 beta))^2

    TRL feeds IPO per-token *average* log-probs; to do the same, build the inputs with
    ``sequence_logprobs(..., length_normalize=True)``.

    Args:
      policy_chosen_logp: ``[B]`` policy (sequence or length-normalised) log-probs, chosen.
      policy_rejected_logp: ``[B]`` policy log-probs, rejected.
      ref_chosen_logp: ``[B]`` reference log-probs, chosen.
      ref_rejected_logp: ``[B]`` reference log-probs, rejected.
      mask: optional ``[B]`` validity of each pair; default all valid.
      beta: regularisation strength ``tau``; the target log-ratio gap is ``1 / (2 beta)``.

    Returns:
      ``(loss, metrics)`` with the same metrics as :func:`dpo_loss`.
    """
    chosen, rejected, keep = _log_ratios(
        policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, mask
    )
    per_pair = jnp.square(chosen - rejected - 1.0 / (2.0 * beta))
    loss = masked_mean(per_pair, keep)
    return loss, jax.lax.stop_gradient(_metrics(chosen, rejected, keep, beta))
