"""GRPO, RLOO and REINFORCE++ as ``(init, step)`` pairs on one frozen base.

Policy = base + adapter (or a full copy); reference = the base alone (no copy is ever held); no
critic. One step on ``P`` prompts x ``G`` completions (rows of a prompt contiguous):

1. no-gradient passes: the reference's log-probs (when ``kl_coef > 0``) and, when needed, the
   sampling policy's ("old") log-probs;
2. advantages from the scores (the algorithm's one difference): GRPO normalises within each
   group, RLOO takes a leave-one-out baseline after putting the KL in the reward, REINFORCE++
   whitens KL-shaped returns over the batch;
3. ``num_iterations`` passes of shuffled minibatch updates of the clipped surrogate (GRPO adds
   ``beta * KL`` to it), each normalised by the whole batch's counts so that the split does not
   change the objective.

Every pass computes each group's prompt once (``shared_prompt``, the default: the ``G``
completions attend to one prefill of their prompt, with gradient) and, for long completions or
large vocabularies, the LM head over chunks (``logit_chunk``).

Scores that are non-finite or beyond ``reward_bound``, and groups whose rows do not share their
prompt (with ``shared_prompt``), skip every update of the step (counted).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rlhf_jax.losses import (group_advantages, grpo_loss, kl_penalty, masked_mean, masked_sum, reinforce_pp_advantages,
                             rloo_advantages, sequence_policy_loss, zero_variance_groups)
from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout import Rollout, grouped_response_hidden, hidden_logprobs_entropy, response_hidden
from rlhf_jax.train.algorithm import Algorithm
from rlhf_jax.train.critic_free.config import CriticFreeConfig, GRPOConfig, ReinforcePPConfig, RLOOConfig
from rlhf_jax.train.optim import guarded_update
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.trainable import init_trainable

PyTree = Any


class GroupBatch(NamedTuple):
    """One step's input: ``P * G`` completions (the ``G`` of each prompt contiguous) and their
    scores."""

    rollout: Rollout
    """Prompt + completion tokens, masks, lengths, EOS flags, the sampler's log-probs."""
    scores: Float[Array, "N"]
    """The reward of each completion (a verifier's, a reward model's, a weighted sum...)."""


class GroupExperience(NamedTuple):
    """What the minibatch updates iterate over (constants of the loss; ``None`` when not needed)."""

    tokens: Int[Array, "N S"]
    attention_mask: Int[Array, "N S"]
    loss_mask: Float[Array, "N T"]
    """The completion mask, rows of filtered zero-variance groups zeroed."""
    advantages: Float[Array, "N"] | Float[Array, "N T"]
    old_logp: Float[Array, "N T"] | None
    """``None``: the update's own log-probs, detached (one on-policy update per step)."""
    ref_logp: Float[Array, "N T"] | None
    """Only for a KL term in the loss (GRPO)."""


def completion_hidden(model_config: ModelConfig, params: PyTree | None, base: PyTree, tokens, attention_mask, n: int,
                      group_size: int = 1, *, grad: bool = True):
    """Hidden states predicting a rollout's last ``n`` tokens for ``base`` + ``params`` (``None``:
    the reference): the ONE forward pass of the critic-free algorithms (reference, old policy,
    training). ``group_size > 1``: rows ``b*G .. b*G+G-1`` share their prompt (the first
    ``S - n`` columns), computed once from row ``b*G`` (:func:`rlhf_jax.rollout.grouped_response_hidden`);
    ``1``: every row's whole sequence. ``grad=False``: a pass without gradient (the shared prompt's
    cache is then written in place)."""
    if group_size == 1:
        return response_hidden(model_config, params, base, tokens, attention_mask, n)
    p = tokens.shape[1] - n
    return grouped_response_hidden(model_config, params, base, tokens[::group_size, :p], attention_mask[::group_size, :p],
                                   tokens[:, p:], attention_mask[:, p:], group_size=group_size,
                                   scan_cache="layers" if grad else "carry")


def group_prompt_mismatch(tokens, attention_mask, n: int, group_size: int):
    """Groups (of ``group_size`` contiguous rows) whose rows do not all carry the same prompt
    (tokens and mask of the first ``S - n`` columns): ``[rows / G]`` bool."""
    p = tokens.shape[1] - n
    t = tokens[:, :p].reshape(-1, group_size, p)
    m = attention_mask[:, :p].reshape(-1, group_size, p)
    return jnp.any((m != m[:, :1]) | ((t != t[:, :1]) & (m > 0)), axis=(1, 2))


AdvantageFn = Callable[..., tuple[Array, dict]]


def _grpo_advantages(config: GRPOConfig, scores, old_logp, ref_logp, mask):
    return group_advantages(scores, group_size=config.group_size, scale=config.scale_rewards,
                            eps=config.advantage_eps), {}


def _kl_in_reward(config, old_logp, ref_logp, mask, estimator):
    if not config.kl_coef:
        return jnp.zeros(mask.shape, jnp.float32)
    return jnp.where(mask > 0, kl_penalty(old_logp, ref_logp, estimator=estimator), 0.0)


def _rloo_advantages(config: RLOOConfig, scores, old_logp, ref_logp, mask):
    # k1 summed over the completion, subtracted from the score (TRL's and the RLOO paper's choice)
    rewards = scores - config.kl_coef * jnp.sum(_kl_in_reward(config, old_logp, ref_logp, mask, "k1"), axis=1)
    adv = rloo_advantages(rewards, group_size=config.group_size, normalize=config.normalize_advantages,
                          eps=config.advantage_eps)
    return adv, {"reward_total": jnp.mean(rewards)}


def _reinforce_pp_advantages(config: ReinforcePPConfig, scores, old_logp, ref_logp, mask):
    kl = _kl_in_reward(config, old_logp, ref_logp, mask, config.kl_estimator)
    adv, returns = reinforce_pp_advantages(scores, kl, mask, beta=config.kl_coef, gamma=config.gamma,
                                           group_size=config.group_size if config.group_baseline else None)
    return adv, {"reward_total": jnp.mean(returns[:, 0])}  # a completion's return at its first token


def make_grpo(model_config: ModelConfig, optimizer, config: GRPOConfig) -> Algorithm:
    """GRPO as an ``(init, step)`` pair (see the module docstring).

    - ``init(key, base) -> TrainState``: the policy is a fresh adapter (``config.policy_lora``,
      ``B = 0``: policy = reference) or a copy of ``base`` (``policy_lora=None``).
    - ``step(state, base, batch: GroupBatch) -> (state, metrics)``.
    """
    return _make(model_config, optimizer, config, GRPOConfig, _grpo_advantages, kl_in_loss=True, who="make_grpo")


def make_rloo(model_config: ModelConfig, optimizer, config: RLOOConfig) -> Algorithm:
    """RLOO as an ``(init, step)`` pair (like :func:`make_grpo`)."""
    return _make(model_config, optimizer, config, RLOOConfig, _rloo_advantages, kl_in_loss=False, who="make_rloo")


def make_reinforce_pp(model_config: ModelConfig, optimizer, config: ReinforcePPConfig) -> Algorithm:
    """REINFORCE++ as an ``(init, step)`` pair (like :func:`make_grpo`)."""
    return _make(model_config, optimizer, config, ReinforcePPConfig, _reinforce_pp_advantages, kl_in_loss=False,
                 who="make_reinforce_pp")


def _make(model_config: ModelConfig, optimizer, config: CriticFreeConfig, kind: type, advantages: AdvantageFn, *,
          kl_in_loss: bool, who: str) -> Algorithm:
    if not isinstance(config, kind):
        raise TypeError(f"{who} needs a {kind.__name__}, got {type(config).__name__}")
    temp, g = config.sampling.temperature, config.group_size
    need_ref = config.kl_coef > 0
    kl_in_reward = need_ref and not kl_in_loss
    if config.old_logprobs == "auto":
        old_source = "recompute" if (kl_in_reward or config.updates_per_step > 1) else "current"
    else:
        old_source = config.old_logprobs
    kl_estimator = getattr(config, "kl_estimator", "k1")
    pass_group = g if config.grouped_passes else 1  # rows sharing one prompt computation

    def init(key, base) -> TrainState:
        k_policy, k_run = jax.random.split(key)
        params = init_trainable(model_config, base, config.policy_lora, k_policy)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), k_run, jnp.zeros((), jnp.int32))

    def logprobs(params, base, tokens, mask, n, entropy=False, grad=False):
        hidden = completion_hidden(model_config, params, base, tokens, mask, n, pass_group, grad=grad)
        return hidden_logprobs_entropy(model_config, params, base, hidden, tokens[:, tokens.shape[1] - n:],
                                       temperature=temp, entropy=entropy, chunk=config.logit_chunk)

    def experience(state: TrainState, base, batch: GroupBatch):
        ro = batch.rollout
        tokens, mask, rmask = ro.tokens, ro.attention_mask, ro.response_mask.astype(jnp.float32)
        rows, n = rmask.shape
        if rows % g:
            raise ValueError(f"the batch has {rows} completions, not a multiple of group_size {g}")
        scores = batch.scores.astype(jnp.float32)
        if config.missing_eos_penalty is not None:
            scores = jnp.where(ro.eos_reached, scores, scores - config.missing_eos_penalty)
        bad = ~jnp.isfinite(scores) | (jnp.abs(scores) > config.reward_bound)
        scores = jnp.where(bad, 0.0, scores)  # the step is skipped; keep the arithmetic finite
        ref_logp = logprobs(None, base, tokens, mask, n)[0] if need_ref else None
        old_logp = {"recompute": lambda: logprobs(state.params, base, tokens, mask, n)[0],
                    "sampler": lambda: ro.logprobs.astype(jnp.float32), "current": lambda: None}[old_source]()
        adv, adv_metrics = advantages(config, scores, old_logp, ref_logp, rmask)
        metrics = {"score": jnp.mean(batch.scores), "score_std": jnp.std(batch.scores),
                   "response_length": jnp.mean(ro.lengths.astype(jnp.float32)),
                   "eos_rate": jnp.mean(ro.eos_reached.astype(jnp.float32)),
                   "bad_scores": jnp.sum(bad), **adv_metrics}
        keep_rows = jnp.ones((rows,), jnp.float32)
        if g > 1:
            zero = zero_variance_groups(scores, group_size=g)
            metrics["zero_std_frac"] = jnp.mean(zero.astype(jnp.float32))
            if config.filter_zero_std:
                keep_rows = 1.0 - jnp.repeat(zero, g).astype(jnp.float32)
        metrics["rows_kept"] = jnp.sum(keep_rows)
        ok = ~jnp.any(bad)
        if pass_group > 1:  # the shared prompt passes need each group's rows to carry one prompt
            mismatch = group_prompt_mismatch(tokens, mask, n, g)
            metrics["prompt_mismatch"] = jnp.sum(mismatch)
            ok &= ~jnp.any(mismatch)
        if need_ref and old_logp is not None:  # the KL of the policy that sampled the batch, nats per completion
            metrics["kl"] = jnp.mean(masked_sum(kl_penalty(jnp.where(rmask > 0, old_logp, 0.0),
                                                           jnp.where(rmask > 0, ref_logp, 0.0),
                                                           estimator=kl_estimator), rmask, axis=1))
        exp = GroupExperience(tokens, mask, rmask * keep_rows[:, None], adv, old_logp,
                              ref_logp if kl_in_loss else None)
        return jax.tree_util.tree_map(jax.lax.stop_gradient, exp), metrics, ok

    def loss_fn(params, base, mb: GroupExperience, num_tokens, num_sequences):
        n = mb.loss_mask.shape[1]
        logp, ent = logprobs(params, base, mb.tokens, mb.attention_mask, n, entropy=config.log_entropy, grad=True)
        old = jax.lax.stop_gradient(logp) if mb.old_logp is None else mb.old_logp
        if config.loss_type == "sequence":
            loss, m = sequence_policy_loss(logp, old, mb.advantages, mb.loss_mask, clip_eps=config.clip_eps,
                                           clip_eps_high=config.clip_eps_high, num_sequences=num_sequences)
        else:
            loss, m = grpo_loss(logp, old, mb.advantages, mb.loss_mask, ref_logp=mb.ref_logp,
                                beta=config.kl_coef if kl_in_loss else 0.0, kl_estimator=kl_estimator,
                                clip_eps=config.clip_eps, clip_eps_high=config.clip_eps_high,
                                loss_type=config.loss_type, num_tokens=num_tokens, num_sequences=num_sequences,
                                max_completion_length=n)
        out = {k: m[k] for k in ("loss", "policy_loss", "clip_frac", "approx_kl", "ratio_max", "kl_per_sequence")
               if k in m}
        if config.log_entropy:
            out["entropy"] = masked_mean(jax.lax.stop_gradient(ent), mb.loss_mask)
        return loss, out

    def step(state: TrainState, base, batch: GroupBatch):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        exp, metrics, scores_ok = experience(state, base, batch)
        rows = exp.tokens.shape[0]
        mini = config.mini_batch_size or rows
        if rows % mini:
            raise ValueError(f"the batch has {rows} completions, not a multiple of mini_batch_size {mini}")
        per_pass = rows // mini
        # the whole batch's counts, per update: M minibatch gradients add up to M x the batch's
        num_tokens = jnp.sum(exp.loss_mask) / per_pass
        num_sequences = metrics["rows_kept"] / per_pass
        if per_pass == 1:
            order = jnp.tile(jnp.arange(rows)[None], (config.num_iterations, 1))
        else:  # shuffled rows, or shuffled whole groups when the passes share each group's prompt
            k = pass_group
            order = jnp.concatenate([
                (jax.random.permutation(jax.random.fold_in(key, e), rows // k)[:, None] * k + jnp.arange(k)).reshape(-1)
                for e in range(config.num_iterations)]).reshape(-1, mini)

        def one(carry, idx):
            params, opt_state, skipped = carry
            mb = jax.tree_util.tree_map(lambda x: x[idx], exp)
            (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, base, mb, num_tokens,
                                                                          num_sequences)
            loss = jnp.where(scores_ok, loss, jnp.nan)  # a bad score (or group) poisons the advantages: skip
            params, opt_state, sk = guarded_update(params, opt_state, grads, loss, optimizer)
            return (params, opt_state, skipped + sk), m

        (params, opt_state, skipped), per_mb = jax.lax.scan(one, (state.params, state.opt_state, state.skipped),
                                                            order)
        kl_seq = per_mb.pop("kl_per_sequence", None)
        if "kl" not in metrics and kl_seq is not None:  # one on-policy update: its KL is the sampler's
            metrics["kl"] = kl_seq[0]
        metrics.update({k: jnp.mean(v) for k, v in per_mb.items()}, skipped=skipped,
                       updates=config.updates_per_step)
        return TrainState(state.step + 1, params, opt_state, state.rng, skipped), metrics

    return Algorithm(init, step)
