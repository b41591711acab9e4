"""Reward-model ensembles on one base: ``E`` reward adapters with their heads, scored in ONE forward
pass over the shared frozen base, an uncertainty-penalised reward, and a monitor of
over-optimisation that needs no gold labels.

One pass: the adapters are stacked (:func:`rlhf_jax.lora.stack_adapters`), the batch's ``B`` rows
are tiled group-major (rows ``e * B .. e * B + B - 1`` are member ``e``'s), and member ``e``'s head
reads its own rows' last real token::

    scores[e, b] = gain_e * (h_e[b, last] . w_e + b_e) + bias_e            [E, B]

The RL reward of an ensemble (Coste et al. 2024, "Reward model ensembles help mitigate
overoptimization"; uncertainty-weighted optimisation) is

    reward[b] = mean_e scores[e, b] - lambda * std_e scores[e, b]

with the population standard deviation (``ddof = 0``): where the members disagree (text unlike
their training data) the reward is lowered, so the policy is not paid for exploiting one member's
mistakes. ``lambda = 0`` is the plain mean.

Over-optimisation (Gao et al. 2023) shows as a *gap*: the policy's reward under the models it
optimises keeps rising while models trained the same way, but never optimised against, stop
following. :class:`GapMonitor` scores each batch of rollouts with both (one pass) and returns

    gap[b] = mean_{e in optimised} scores[e, b] - mean_{e in held out} scores[e, b]

with the held-out members' disagreement as a part; give it to PPO as a monitor (logged, and a
stop rule may watch it). All members should be normalised on the same samples (e.g. the SFT
model's, :func:`rlhf_jax.scoring.normalize_on_samples`) so that their scores share a scale: the
gap then starts near 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from rlhf_jax.lora import Adapter, stack_adapters
from rlhf_jax.model import ModelConfig, Transformer, score_head
from rlhf_jax.scoring.reward_model import RewardModel
from rlhf_jax.scoring.scorers import Completions, Scorer, _as_scores

PyTree = Any


def _check_members(members: Sequence[RewardModel], who: str) -> list[RewardModel]:
    members = list(members)
    if not members:
        raise ValueError(f"{who}: no reward models")
    for i, m in enumerate(members):
        if not isinstance(m, RewardModel):
            raise TypeError(f"{who}: member {i} is a {type(m).__name__}, not a RewardModel")
        if m.model is not None and not isinstance(m.model, Adapter):
            raise ValueError(f"{who}: member {i} is a full parameter tree; one pass over the shared base needs "
                             "adapter reward models (score a full-tree model with reward_scores)")
    return members


def ensemble_raw_scores(model_config: ModelConfig, members: Sequence[RewardModel], base: PyTree,
                        tokens: Int[Array, "B T"], attention_mask: Int[Array, "B T"]) -> Float[Array, "E B"]:
    """Un-normalised scores ``h_e[b, last] . w_e + b_e`` of every member, ``[E, B]`` float32, from
    ONE forward pass over ``base`` on ``E * B`` rows (members are adapters over ``base``, or
    ``model=None``: the base itself). Equal to ``E`` separate :func:`raw_scores` passes."""
    members = _check_members(members, "ensemble_raw_scores")
    e, b = len(members), tokens.shape[0]
    stacked, lora = stack_adapters([(m.model.tree, m.model.config) if m.model is not None else (None, None)
                                    for m in members])
    variables = {"params": base} if stacked is None else {"params": base, "lora": stacked}
    rows, mask = (tokens, attention_mask) if stacked is None else (jnp.tile(tokens, (e, 1)),
                                                                    jnp.tile(attention_mask, (e, 1)))
    hidden = Transformer(model_config, lora=lora).apply(variables, rows, attention_mask=mask, return_hidden=True,
                                                        compute_logits=False).hidden
    parts = [hidden if stacked is None else hidden[i * b:(i + 1) * b] for i in range(e)]
    return jnp.stack([score_head(m.head, h, attention_mask) for m, h in zip(members, parts)])


def ensemble_scores(model_config: ModelConfig, members: Sequence[RewardModel], base: PyTree,
                    tokens: Int[Array, "B T"], attention_mask: Int[Array, "B T"]) -> Float[Array, "E B"]:
    """Normalised scores ``gain_e * raw[e] + bias_e``, ``[E, B]``, in one pass (see
    :func:`ensemble_raw_scores`)."""
    raw = ensemble_raw_scores(model_config, members, base, tokens, attention_mask)
    gain = jnp.stack([jnp.asarray(m.gain, jnp.float32) for m in members])
    bias = jnp.stack([jnp.asarray(m.bias, jnp.float32) for m in members])
    return gain[:, None] * raw + bias[:, None]


def penalised_mean(scores: Float[Array, "E B"], *, uncertainty_coef: float = 0.0) -> Float[Array, "B"]:
    """``mean_e scores[e] - uncertainty_coef * std_e scores[e]`` (population std, ``ddof = 0``).

    Example: members' scores ``[1, 3]`` for one completion: mean 2, std 1; with coefficient 0.5
    the reward is 1.5."""
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 2:
        raise ValueError(f"penalised_mean: scores must be [E, B], got shape {scores.shape}")
    return scores.mean(axis=0) - uncertainty_coef * scores.std(axis=0)


class EnsembleScorer(Scorer):
    """An ensemble of reward adapters as an RL reward: ``mean - uncertainty_coef * std`` over the
    members, all scored in one pass over the shared base.

    :meth:`score_and_parts` also returns each member's score (``member_0`` ...), their ``mean``
    and ``std`` (PPO logs them as ``reward/...``). ``reward_model`` is the first member, from
    which PPO's ``critic_init="reward"`` starts the critic."""

    def __init__(self, model_config: ModelConfig, members: Sequence[RewardModel], *, uncertainty_coef: float = 0.0,
                 name: str = "reward"):
        self.members = _check_members(members, "EnsembleScorer")
        if not np.isfinite(uncertainty_coef) or uncertainty_coef < 0:
            raise ValueError(f"EnsembleScorer: uncertainty_coef must be >= 0, got {uncertainty_coef}")
        self.model_config, self.uncertainty_coef, self.name = model_config, float(uncertainty_coef), name
        self.reward_model = self.members[0]
        self._scores = jax.jit(lambda ms, base, tokens, mask: ensemble_scores(model_config, ms, base, tokens, mask))

    def member_scores(self, completions: Completions, base: PyTree) -> np.ndarray:
        """``[E, B]`` float32: every member's normalised score."""
        out = np.asarray(self._scores(self.members, base, completions.tokens, completions.attention_mask), np.float32)
        n = len(completions.texts)
        if out.shape != (len(self.members), n):
            raise ValueError(f"ensemble {self.name!r}: scores of shape {out.shape} for {n} completions")
        return out

    def score_and_parts(self, completions: Completions, base: PyTree) -> tuple[np.ndarray, dict]:
        s = self.member_scores(completions, base)
        score = np.asarray(penalised_mean(s, uncertainty_coef=self.uncertainty_coef))
        parts = {f"member_{i}": s[i] for i in range(len(s))}
        parts.update(mean=s.mean(axis=0), std=s.std(axis=0))
        return _as_scores(score, len(completions.texts), f"ensemble {self.name!r}"), parts

    def parts(self, completions: Completions, base: PyTree) -> dict[str, np.ndarray]:
        return self.score_and_parts(completions, base)[1]

    def __call__(self, completions: Completions, base: PyTree) -> np.ndarray:
        return self.score_and_parts(completions, base)[0]


class GapMonitor(Scorer):
    """Over-optimisation without gold labels: per completion, the mean score of the reward models
    being optimised minus the mean score of held-out members (trained alike, never optimised), all
    in one pass. Parts: ``optimised``, ``held_out`` (the two means) and ``held_out_std`` (the
    held-out members' disagreement; 0 with one held-out member). Near 0 on the SFT model's samples
    when every member is normalised on them; rising means the policy is exploiting what only the
    optimised models reward. Give it to :func:`rlhf_jax.train.train_ppo` as a monitor."""

    def __init__(self, model_config: ModelConfig, optimised: Sequence[RewardModel], held_out: Sequence[RewardModel],
                 *, name: str = "overopt_gap"):
        self.optimised = _check_members(optimised, "GapMonitor (optimised)")
        self.held_out = _check_members(held_out, "GapMonitor (held_out)")
        self.name = name
        self._all = EnsembleScorer(model_config, [*self.optimised, *self.held_out], name=name)

    def score_and_parts(self, completions: Completions, base: PyTree) -> tuple[np.ndarray, dict]:
        s = self._all.member_scores(completions, base)
        opt, held = s[:len(self.optimised)], s[len(self.optimised):]
        gap = opt.mean(axis=0) - held.mean(axis=0)
        return gap, {"optimised": opt.mean(axis=0), "held_out": held.mean(axis=0), "held_out_std": held.std(axis=0)}

    def parts(self, completions: Completions, base: PyTree) -> dict[str, np.ndarray]:
        return self.score_and_parts(completions, base)[1]

    def __call__(self, completions: Completions, base: PyTree) -> np.ndarray:
        return self.score_and_parts(completions, base)[0]
