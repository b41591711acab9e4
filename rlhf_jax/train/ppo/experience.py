"""PPO's experience pass (no gradient): the rollout's old log-probs, reference log-probs, values,
per-token rewards (:func:`rlhf_jax.losses.kl_shaped_rewards`), GAE advantages and returns.

Two layers: :func:`advantages_from_arrays` is arrays only (log-probs, values, scores, masks in;
rewards, advantages, returns out), and :func:`make_ppo_experience` runs the forward passes that
produce those arrays from a rollout."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rlhf_jax.losses import gae, kl_penalty, kl_shaped_rewards, masked_mean, masked_whiten
from rlhf_jax.model import ModelConfig, value_head
from rlhf_jax.rollout import Rollout, response_exact_kl, response_hidden, response_logprobs_entropy
from rlhf_jax.train.ppo.config import PPOConfig

PyTree = Any


class PPOBatch(NamedTuple):
    """One PPO step's input: the rollout the policy generated and the scores its completions got."""

    rollout: Rollout
    """Prompt + response tokens, masks, lengths, EOS flags, the sampler's log-probs."""
    scores: Float[Array, "B"]
    """The reward of each completion (a reward model's, a Python function's, ...)."""


class Experience(NamedTuple):
    """What the update epochs iterate over (all constants of the loss)."""

    tokens: Int[Array, "B S"]
    attention_mask: Int[Array, "B S"]
    response_mask: Int[Array, "B N"]
    old_logp: Float[Array, "B N"]
    old_values: Float[Array, "B N"]
    advantages: Float[Array, "B N"]
    returns: Float[Array, "B N"]


class Advantages(NamedTuple):
    rewards: Float[Array, "B N"]
    """Per-token rewards ``-beta * KL_t`` + the (penalised) score on the last token."""
    advantages: Float[Array, "B N"]
    returns: Float[Array, "B N"]
    kl: Float[Array, "B N"]
    """Per-token KL estimate, 0 outside the response."""
    scores: Float[Array, "B"]
    """Scores after the missing-EOS penalty."""


def advantages_from_arrays(logp, ref_logp, values, scores, response_mask, eos_reached, *, beta, config: PPOConfig,
                           kl: Float[Array, "B N"] | None = None) -> Advantages:
    """Arrays in, advantages out (the heart of the experience pass):

        score' = score - missing_eos_penalty   (rows cut at max_new_tokens without EOS)
        KL_t   = kl_penalty(logp, ref_logp, estimator)   (or the given exact ``kl``)
        r_t    = -beta KL_t + [t = last] score'           (optionally whitened, mean kept)
        A, R   = gae(r, values, mask, gamma, lam)          (A optionally whitened)
    """
    if config.missing_eos_penalty is not None:
        scores = jnp.where(eos_reached, scores, scores - config.missing_eos_penalty)
    if kl is None:
        kl = kl_penalty(logp, ref_logp, estimator=config.kl_estimator)
    kl = jnp.where(response_mask > 0, kl, 0.0)
    rewards = kl_shaped_rewards(kl, scores, response_mask, beta=beta)
    if config.whiten_rewards:
        rewards = masked_whiten(rewards, response_mask, shift_mean=False)
    adv, returns = gae(rewards, values, response_mask, gamma=config.gamma, lam=config.lam)
    if config.whiten_advantages:
        adv = masked_whiten(adv, response_mask)
    return Advantages(rewards, adv, returns, kl, scores)


def critic_values(model_config: ModelConfig, critic: dict, base, tokens, attention_mask, n: int):
    """Per-token values ``[B, N]`` of the response from ``critic = {"model": ..., "head": ...}``."""
    hidden = response_hidden(model_config, critic["model"], base, tokens, attention_mask, n)
    return value_head(critic["head"], hidden)


def make_ppo_experience(model_config: ModelConfig, config: PPOConfig):
    """Unjitted ``experience(state, base, batch: PPOBatch) -> (Experience, metrics, seq_kl [B])``:
    one no-gradient forward pass each of the policy (unless ``old_logprobs="sampler"`` and the KL
    is not exact), the reference (the base alone) and the critic."""
    temp = config.sampling.temperature
    recompute = config.old_logprobs == "recompute"
    need_logits = recompute or config.kl_estimator == "full"

    def experience(state, base, batch: PPOBatch):
        ro = batch.rollout
        tokens, mask, rmask = ro.tokens, ro.attention_mask, ro.response_mask
        n = rmask.shape[1]
        b = tokens.shape[0]
        rows = config.experience_batch or b
        if b % rows:
            raise ValueError(f"PPO experience: a rollout of {b} rows does not split into experience_batch={rows}; "
                             "make batch_size a multiple of it")

        def passes(x):  # the forward passes over one group of rows
            tok, msk = x["tokens"], x["mask"]
            pass_kw = dict(temperature=temp, chunk=config.logit_chunk)
            out = {}
            if need_logits:
                out["logp"], out["entropy"], hidden = response_logprobs_entropy(
                    model_config, state.params["policy"], base, tok, msk, n, entropy=True, **pass_kw)
            out["ref_logp"], _, ref_hidden = response_logprobs_entropy(model_config, None, base, tok, msk, n, **pass_kw)
            out["values"] = critic_values(model_config, state.params["critic"], base, tok, msk, n)
            if config.kl_estimator == "full":
                out["kl"] = response_exact_kl(model_config, state.params["policy"], base, hidden, ref_hidden, **pass_kw)
            return out

        x = {"tokens": tokens, "mask": mask}
        if rows == b:
            out = passes(x)
        else:
            groups = jax.tree_util.tree_map(lambda a: a.reshape(b // rows, rows, *a.shape[1:]), x)
            out = jax.tree_util.tree_map(lambda a: a.reshape(b, *a.shape[2:]), jax.lax.map(passes, groups))
        # recompute, or the sampler's log-probs: log softmax(logits / temp)[token] over the full vocabulary
        logp = out["logp"] if recompute else ro.logprobs.astype(jnp.float32)
        ref_logp, values, exact = out["ref_logp"], out["values"], out.get("kl")
        adv = advantages_from_arrays(logp, ref_logp, values, batch.scores, rmask, ro.eos_reached,
                                     beta=state.kl.beta, config=config, kl=exact)
        seq_kl = jnp.sum(adv.kl, axis=1)
        metrics = {
            "score": jnp.mean(batch.scores), "score_std": jnp.std(batch.scores),
            "reward_total": jnp.mean(jnp.sum(adv.rewards * rmask, axis=1)),
            "kl": jnp.mean(seq_kl), "beta": state.kl.beta,
            "response_length": jnp.mean(ro.lengths.astype(jnp.float32)),
            "eos_rate": jnp.mean(ro.eos_reached.astype(jnp.float32)),
            "value_mean": masked_mean(values, rmask), "return_mean": masked_mean(adv.returns, rmask),
        }
        if need_logits:  # no policy pass with old_logprobs="sampler" (and a sampled-token KL): no entropy metric
            metrics["entropy"] = masked_mean(out["entropy"], rmask)
        exp = Experience(tokens, mask, rmask, logp, values, adv.advantages, adv.returns)
        return jax.tree_util.tree_map(jax.lax.stop_gradient, exp), metrics, seq_kl

    return experience
