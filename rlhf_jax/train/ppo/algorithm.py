"""PPO with a KL penalty to a frozen reference, on one frozen base, as an ``(init, step)`` pair.

Policy = base + policy adapter (or a full copy); reference = the base alone; critic = base + critic
adapter (or a full copy) + value head. One step: the experience pass
(:func:`rlhf_jax.train.ppo.experience.make_ppo_experience`), then ``ppo_epochs`` epochs of shuffled
minibatches of :func:`rlhf_jax.losses.ppo_loss` on the trainable trees, then the KL-coefficient
update. The KL controller is built here from the config and lives in the state; the reward reaches
the step as ``batch.scores``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.losses import KLControllerState, adaptive_kl_controller, fixed_kl_controller, ppo_loss
from rlhf_jax.model import ModelConfig, init_head
from rlhf_jax.rollout import response_logprobs_entropy
from rlhf_jax.train.algorithm import Algorithm
from rlhf_jax.train.optim import guarded_update
from rlhf_jax.train.ppo.config import PPOConfig
from rlhf_jax.train.ppo.experience import Experience, PPOBatch, critic_values, make_ppo_experience
from rlhf_jax.train.trainable import init_trainable

PyTree = Any


class PPOState(NamedTuple):
    """Everything PPO updates; the base and the reward are not in here (frozen)."""

    step: jax.Array
    params: dict
    """``{"policy": Adapter | full tree, "critic": {"model": Adapter | full tree, "head": value head}}``."""
    opt_state: Any
    kl: KLControllerState
    """The KL coefficient ``beta`` (and the controller's state)."""
    rng: jax.Array
    skipped: jax.Array
    """Minibatch updates skipped for a non-finite loss, gradient or score (cumulative)."""


def kl_controller(config: PPOConfig):
    """The fixed or adaptive KL controller the config describes."""
    if config.adaptive_kl:
        return adaptive_kl_controller(init_beta=config.kl_coef, target=config.kl_target, horizon=config.kl_horizon)
    return fixed_kl_controller(config.kl_coef)


def make_ppo(model_config: ModelConfig, optimizer, config: PPOConfig) -> Algorithm:
    """PPO as an ``(init, step)`` pair.

    - ``init(key, base, *, critic=None) -> PPOState``: the policy is a fresh adapter
      (``config.policy_lora``; ``B = 0`` so the policy equals the reference) or a copy of ``base``
      (``policy_lora=None``); the critic is ``critic`` when given (e.g.
      :func:`rlhf_jax.scoring.critic_from_reward`) or a fresh adapter (``config.critic_lora``; a
      base copy when ``None``) with a zero value head.
    - ``step(state, base, batch: PPOBatch) -> (state, metrics)``. Scores outside
      ``[-reward_bound, reward_bound]`` or non-finite skip every update of the step (counted).
    """
    kl_ctl = kl_controller(config)
    experience = make_ppo_experience(model_config, config)
    temp = config.sampling.temperature
    n_updates = config.ppo_epochs * (config.batch_size // config.mini_batch_size)

    def init(key, base, *, critic: dict | None = None) -> PPOState:
        k_policy, k_critic, k_run = jax.random.split(key, 3)
        policy = init_trainable(model_config, base, config.policy_lora, k_policy)
        if critic is None:
            critic = {"model": init_trainable(model_config, base, config.critic_lora, k_critic),
                      "head": init_head(k_critic, model_config.hidden_size, std=0.0)}
        params = {"policy": policy, "critic": critic}
        return PPOState(jnp.zeros((), jnp.int32), params, optimizer.init(params), kl_ctl.init(), k_run,
                        jnp.zeros((), jnp.int32))

    def loss_fn(params, base, mb: Experience):
        n = mb.response_mask.shape[1]
        logp, entropy, _ = response_logprobs_entropy(model_config, params["policy"], base, mb.tokens, mb.attention_mask,
                                                     n, temperature=temp, entropy=bool(config.entropy_coef),
                                                     chunk=config.logit_chunk)
        values = critic_values(model_config, params["critic"], base, mb.tokens, mb.attention_mask, n)
        loss, m = ppo_loss(logp, mb.old_logp, mb.advantages, values, mb.old_values, mb.returns, mb.response_mask,
                           entropy=entropy, clip_eps=config.clip_eps, value_clip_eps=config.value_clip_eps,
                           vf_coef=config.vf_coef, entropy_coef=config.entropy_coef)
        keep = ("loss", "policy_loss", "clip_frac", "approx_kl", "ratio_max", "value_loss", "value_clip_frac",
                "value_error")
        return loss, {k: m[k] for k in keep}

    def step(state: PPOState, base, batch: PPOBatch):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        exp, exp_metrics, seq_kl = experience(state, base, batch)
        scores_ok = jnp.all(jnp.isfinite(batch.scores) & (jnp.abs(batch.scores) <= config.reward_bound))
        b = exp.tokens.shape[0]
        order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(key, e), b)
                                 for e in range(config.ppo_epochs)]).reshape(-1, config.mini_batch_size)

        def one(carry, rows):
            params, opt_state, skipped = carry
            mb = jax.tree_util.tree_map(lambda x: x[rows], exp)
            (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, base, mb)
            # a bad score poisons every advantage of the batch: skip like a non-finite loss
            loss = jnp.where(scores_ok, loss, jnp.nan)
            params, opt_state, sk = guarded_update(params, opt_state, grads, loss, optimizer)
            return (params, opt_state, skipped + sk), m

        (params, opt_state, skipped), per_mb = jax.lax.scan(one, (state.params, state.opt_state, state.skipped), order)
        kl_state = kl_ctl.update(state.kl, jnp.mean(seq_kl), b)
        kl_state = jax.tree_util.tree_map(lambda new, old: jnp.where(scores_ok, new, old), kl_state, state.kl)
        metrics = dict(exp_metrics, **{k: jnp.mean(v) for k, v in per_mb.items()}, skipped=skipped,
                       updates=n_updates, bad_scores=jnp.sum(~(jnp.isfinite(batch.scores)
                                                               & (jnp.abs(batch.scores) <= config.reward_bound))))
        return PPOState(state.step + 1, params, opt_state, kl_state, state.rng, skipped), metrics

    return Algorithm(init, step)
