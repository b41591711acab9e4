"""PPO with a KL penalty to a frozen reference, on one frozen base.

Policy = base + policy LoRA; reference = base alone; critic = base + critic LoRA + value head;
reward = a :mod:`rlhf_jax.train.reward_fn` reward (by default a reward adapter over the same
base). The base is held once. One PPO step (``make_ppo_step``) is: score the rollout, one
no-gradient forward pass each for policy / reference / critic log-probs and values, per-token
reward ``-beta * KL_t`` plus the score on the last real token, GAE, then ``ppo_epochs`` epochs
of shuffled minibatches of the clipped policy + value loss (- entropy bonus) on the adapters, and
the KL-coefficient update. Generation is a separate jitted :class:`rlhf_jax.rollout.Sampler`.

Full fine-tuning: ``PPOConfig(policy_lora=None)`` makes the policy a trainable copy of the whole
base (the reference is still the frozen base, never modified); ``critic_lora=None`` makes the
critic a trainable copy of the base (with the reward adapter merged in when
``critic_init="reward"``) plus the value head. Each full copy costs one more base in memory, and
its Adam state two more.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import LoraConfig, init_lora, merge_lora
from rlhf_jax.losses import (KLControllerState, adaptive_kl_controller, entropy_from_logits, exact_kl_from_logits,
                             fixed_kl_controller, gae, kl_penalty, masked_mean, masked_whiten, ppo_policy_loss,
                             ppo_value_loss, token_logprobs)
from rlhf_jax.model import ModelConfig, Transformer, init_head, lm_logits, value_head
from rlhf_jax.rollout import Rollout, Sampler, SamplingConfig, decode_responses, left_pad
from rlhf_jax.sharding import jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.train.reward_fn import ModelReward, TextReward
from rlhf_jax.train.run import Checkpoints, MetricsLogger, RunConfig
from rlhf_jax.train.state import OptimConfig, batch_indices, guarded_update, make_optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig:
    """PPO-with-KL RLHF (Ziegler et al. 2019; Ouyang et al. 2022). Defaults follow common practice."""

    policy_lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The policy adapter (its ``B`` starts at 0: policy = reference at step 0). ``None``: full
    fine-tuning: the policy is a trainable copy of the whole base (``state.params["policy"]`` is a
    full parameter tree, equal to the base at step 0) and the reference stays the frozen base
    (CLI ``--policy_lora.off``, JSON ``"policy_lora": null``)."""
    critic_lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The critic adapter (with ``critic_init="reward"`` the reward adapter's config replaces it).
    ``None``: full fine-tuning whatever ``critic_init``: ``state.params["critic"]`` is
    ``{"params": full tree, "head": value head}``, the tree a copy of the base (with
    ``critic_init="reward"``: of the base with the reward adapter merged in)."""
    critic_init: str = "reward"
    """``"reward"``: critic adapter (or full critic, reward adapter merged) and value head start
    from the reward adapter and score head (needs a :class:`ModelReward` with an adapter sharing
    the base); ``"zero"``: fresh adapter (or a copy of the base), zero head."""
    batch_size: int = 16
    """Prompts (episodes) per PPO step."""
    mini_batch_size: int = 8
    """Episodes per gradient update; ``batch_size`` must be a multiple."""
    ppo_epochs: int = 4
    """Passes over each batch of experience."""
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=32, temperature=1.0)
    """How the policy generates (the same temperature scores the log-probs)."""
    clip_eps: float = 0.2
    """Policy ratio clip range."""
    value_clip_eps: float | None = 0.2
    """Value clip range (reward units); ``None``: unclipped."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    kl_coef: float = 0.05
    """KL penalty coefficient beta (initial value when adaptive)."""
    adaptive_kl: bool = False
    """Adapt beta towards ``kl_target`` (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL per sequence (nats) of the adaptive controller."""
    kl_horizon: float = 10000.0
    """Horizon (episodes) of the adaptive controller."""
    kl_estimator: str = "k1"
    """Per-token KL in the reward: ``"k1"``, ``"k2"``, ``"k3"`` on the sampled tokens, or
    ``"full"`` (exact over the vocabulary)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (without shifting the mean) before GAE."""
    whiten_advantages: bool = True
    """Whiten the advantages."""
    old_logprobs: str = "recompute"
    """PPO's "old" log-probs: ``"recompute"``: a no-gradient policy forward pass over the rollout;
    ``"sampler"``: the log-probs the sampler returned with the rollout (same temperature, full
    vocabulary; equal up to float rounding of the KV-cached decode). ``"sampler"`` skips the
    policy forward in the experience pass unless ``kl_estimator="full"`` needs its logits;
    without it the ``entropy`` metric is not logged."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of a completion cut at ``max_new_tokens`` without EOS."""
    max_prompt_length: int | None = None
    """Prompts longer than this are cut from the left (counted); ``None``: the model's context
    minus ``max_new_tokens``."""
    reward_threshold: float | None = None
    """Stop once the mean score over the last ``threshold_window`` steps reaches this."""
    threshold_window: int = 5
    """Steps averaged for ``reward_threshold``."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-4)
    """Optimizer of the policy and critic adapters (one optimizer, joint loss)."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    def __post_init__(self):
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of mini_batch_size "
                             f"{self.mini_batch_size}")
        if self.kl_estimator not in ("k1", "k2", "k3", "full"):
            raise ValueError(f"kl_estimator must be k1/k2/k3/full, got {self.kl_estimator!r}")
        if self.critic_init not in ("reward", "zero"):
            raise ValueError(f"critic_init must be 'reward' or 'zero', got {self.critic_init!r}")
        if self.old_logprobs not in ("recompute", "sampler"):
            raise ValueError(f"old_logprobs must be 'recompute' or 'sampler', got {self.old_logprobs!r}")


class PPOState(NamedTuple):
    """Everything PPO updates; the base and the reward model are not in here (frozen)."""

    step: jax.Array
    params: dict
    """``{"policy": adapter, "critic": {"lora": adapter, "head": value head}}``; with full
    fine-tuning ``"policy"`` is a full parameter tree and ``"critic"`` is
    ``{"params": full tree, "head": value head}``."""
    opt_state: Any
    kl: KLControllerState
    rng: jax.Array
    skipped: jax.Array
    """Minibatch updates skipped for a non-finite loss or gradient."""


class Experience(NamedTuple):
    tokens: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    old_logp: jax.Array
    old_values: jax.Array
    advantages: jax.Array
    returns: jax.Array


def _response_slice(x, p, n):
    """Outputs at positions ``P-1 .. P+N-2`` predict / value the ``N`` response tokens."""
    return jax.lax.slice_in_dim(x, p - 1, p - 1 + n, axis=1)


def policy_variables(base, policy, lora: LoraConfig | None) -> dict:
    """The policy's variables for ``model.apply``: ``{"params": base, "lora": policy}`` for an
    adapter (``lora`` its config), ``{"params": policy}`` for a fully fine-tuned policy
    (``lora=None``: ``policy`` is a whole parameter tree and ``base`` is not used)."""
    return {"params": policy} if lora is None else {"params": base, "lora": policy}


def _forwards(model_config: ModelConfig, config: PPOConfig, critic_lora: LoraConfig | None):
    """``(policy_logits, reference_logits, values)`` over the response positions."""
    policy = Transformer(model_config, lora=config.policy_lora)
    critic = Transformer(model_config, lora=critic_lora)

    def logits_of(variables, tokens, mask, p, n):
        # the LM head on the response positions only (the prompt's logits are never used)
        hidden = policy.apply(variables, tokens, attention_mask=mask, return_hidden=True, compute_logits=False).hidden
        return lm_logits(model_config, variables["params"], _response_slice(hidden, p, n))

    def policy_logits(base, params, tokens, mask, p, n):
        return logits_of(policy_variables(base, params, config.policy_lora), tokens, mask, p, n)

    def reference_logits(base, tokens, mask, p, n):
        return logits_of({"params": base}, tokens, mask, p, n)

    def values_of(base, crit, tokens, mask, p, n):
        variables = {"params": crit["params"]} if critic_lora is None else {"params": base, "lora": crit["lora"]}
        hidden = critic.apply(variables, tokens, attention_mask=mask, return_hidden=True, compute_logits=False).hidden
        return value_head(crit["head"], _response_slice(hidden, p, n))

    return policy_logits, reference_logits, values_of


def make_ppo_experience(model_config: ModelConfig, config: PPOConfig, reward: ModelReward | None,
                        critic_lora: LoraConfig | None):
    """Unjitted ``experience(state, base, reward_arrays, rollout, ext_scores) -> (Experience,
    metrics, seq_kl)``: the no-gradient part of a PPO step (scores, old log-probs, reference
    log-probs, values, per-token rewards, GAE). ``critic_lora=None``: a full critic
    (``state.params["critic"]["params"]``)."""
    policy_logits, reference_logits, values_of = _forwards(model_config, config, critic_lora)
    temp = config.sampling.temperature
    recompute = config.old_logprobs == "recompute"
    need_logits = recompute or config.kl_estimator == "full"

    def experience(state: PPOState, base, reward_arrays, rollout: Rollout, ext_scores):
        tokens, mask, rmask = rollout.tokens, rollout.attention_mask, rollout.response_mask
        n = rmask.shape[1]
        p = tokens.shape[1] - n
        resp = tokens[:, p:]
        logits = policy_logits(base, state.params["policy"], tokens, mask, p, n) if need_logits else None
        ref_logits = reference_logits(base, tokens, mask, p, n)
        # the sampler's log-probs: log softmax(logits / temp)[token] over the full vocabulary, 0
        # after the response ends (masked out wherever they are used)
        logp = token_logprobs(logits, resp, temperature=temp) if recompute else rollout.logprobs.astype(jnp.float32)
        ref_logp = token_logprobs(ref_logits, resp, temperature=temp)
        values = values_of(base, state.params["critic"], tokens, mask, p, n)
        score = ext_scores if reward is None else reward.score(reward_arrays, base, tokens, mask)
        raw_score = score
        if config.missing_eos_penalty is not None:
            score = jnp.where(rollout.eos_reached, score, score - config.missing_eos_penalty)
        if config.kl_estimator == "full":
            kl = exact_kl_from_logits(logits, ref_logits, temperature=temp)
        else:
            kl = kl_penalty(logp, ref_logp, estimator=config.kl_estimator)
        kl = kl * rmask
        beta = state.kl.beta
        last = jax.nn.one_hot(jnp.maximum(rollout.lengths - 1, 0), n, dtype=jnp.float32)
        rewards = -beta * kl + last * score[:, None]
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, rmask, shift_mean=False)
        adv, returns = gae(rewards, values, rmask, gamma=config.gamma, lam=config.lam)
        if config.whiten_advantages:
            adv = masked_whiten(adv, rmask)
        seq_kl = jnp.sum(kl, axis=1)
        metrics = {
            "score": jnp.mean(raw_score), "score_std": jnp.std(raw_score),
            "reward_total": jnp.mean(jnp.sum(rewards * rmask, axis=1)),
            "kl": jnp.mean(seq_kl), "beta": beta,
        }
        if logits is not None:  # no policy logits with old_logprobs="sampler": no entropy metric
            metrics["entropy"] = masked_mean(entropy_from_logits(logits, temperature=temp), rmask)
        metrics.update({
            "response_length": jnp.mean(rollout.lengths.astype(jnp.float32)),
            "eos_rate": jnp.mean(rollout.eos_reached.astype(jnp.float32)),
            "value_mean": masked_mean(values, rmask), "return_mean": masked_mean(returns, rmask),
        })
        exp = Experience(tokens, mask, rmask, logp, values, adv, returns)
        return jax.tree_util.tree_map(jax.lax.stop_gradient, exp), metrics, seq_kl

    return experience


def make_ppo_step(model_config: ModelConfig, config: PPOConfig, optimizer, reward: ModelReward | None,
                  critic_lora: LoraConfig | None):
    """Unjitted ``step(state, base, reward_arrays, rollout, ext_scores) -> (state, metrics)``.

    ``ext_scores`` ``[B]`` are the host-computed scores of a :class:`TextReward` (``None`` with an
    in-graph ``reward``). ``critic_lora``: the critic adapter's config (``None``: a full critic);
    ``config.policy_lora=None``: a full policy."""
    policy_logits, _, values_of = _forwards(model_config, config, critic_lora)
    experience = make_ppo_experience(model_config, config, reward, critic_lora)
    temp = config.sampling.temperature
    kl_ctl = (adaptive_kl_controller(init_beta=config.kl_coef, target=config.kl_target, horizon=config.kl_horizon)
              if config.adaptive_kl else fixed_kl_controller(config.kl_coef))

    def loss_fn(params, base, mb: Experience):
        n = mb.response_mask.shape[1]
        p = mb.tokens.shape[1] - n
        logits = policy_logits(base, params["policy"], mb.tokens, mb.attention_mask, p, n)
        logp = token_logprobs(logits, mb.tokens[:, p:], temperature=temp)
        pg, pg_m = ppo_policy_loss(logp, mb.old_logp, mb.advantages, mb.response_mask, clip_eps=config.clip_eps)
        values = values_of(base, params["critic"], mb.tokens, mb.attention_mask, p, n)
        vf, vf_m = ppo_value_loss(values, mb.old_values, mb.returns, mb.response_mask, clip_eps=config.value_clip_eps)
        loss = pg + config.vf_coef * vf
        if config.entropy_coef:
            ent = masked_mean(entropy_from_logits(logits, temperature=temp), mb.response_mask)
            loss = loss - config.entropy_coef * ent
        m = {k: pg_m[k] for k in ("policy_loss", "clip_frac", "approx_kl", "ratio_max")}
        m.update({k: vf_m[k] for k in ("value_loss", "value_clip_frac", "value_error")})
        return loss, dict(m, loss=loss)

    def step(state: PPOState, base, reward_arrays, rollout: Rollout, ext_scores=None):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        exp, exp_metrics, seq_kl = experience(state, base, reward_arrays, rollout, ext_scores)
        b = exp.tokens.shape[0]
        order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(key, e), b)
                                 for e in range(config.ppo_epochs)]).reshape(-1, config.mini_batch_size)

        def one(carry, rows):
            params, opt_state, skipped = carry
            mb = jax.tree_util.tree_map(lambda x: x[rows], exp)
            (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, base, mb)
            params, opt_state, sk = guarded_update(params, opt_state, grads, loss, optimizer)
            return (params, opt_state, skipped + sk), m

        (params, opt_state, skipped), per_mb = jax.lax.scan(one, (state.params, state.opt_state, state.skipped), order)
        kl_state = kl_ctl.update(state.kl, jnp.mean(seq_kl), b)
        metrics = dict(exp_metrics, **{k: jnp.mean(v) for k, v in per_mb.items()}, skipped=skipped)
        return PPOState(state.step + 1, params, opt_state, kl_state, state.rng, skipped), metrics

    return step, kl_ctl


class PPOResult(NamedTuple):
    state: PPOState
    history: list[dict]
    stop_reason: str


class PPOTrainer:
    """Runs PPO: ``PPOTrainer(model_config, base, tokenizer, prompts, reward, config).train()``.

    Args:
      model_config: the base's config.
      base: the frozen base parameters (the SFT model, any SFT adapter merged in): the reference,
        never modified (a fully fine-tuned policy or critic trains a copy of it).
      tokenizer: a ``transformers`` tokenizer with a pad token.
      prompts: prompt texts.
      reward: a :class:`ModelReward` or :class:`TextReward`.
      monitors: optional ``{name: fn(prompts, completions) -> per-sample floats}`` scored on each
        step's decoded rollouts (special tokens kept) and logged as ``name`` (their mean): watch a
        held-back judge, e.g. a gold rubric, while optimising the proxy reward. Never used in the
        loss.
    """

    def __init__(self, model_config: ModelConfig, base: dict, tokenizer, prompts: Sequence[str],
                 reward: ModelReward | TextReward, config: PPOConfig, *,
                 monitors: dict[str, Callable[[Sequence[str], Sequence[str]], Sequence[float]]] | None = None):
        self.monitors = dict(monitors or {})
        if tokenizer.pad_token_id is None:
            raise ValueError("PPOTrainer: the tokenizer has no pad token; set tokenizer.pad_token first")
        self.mesh = None if config.run.mesh is None else make_mesh(config.run.mesh)
        self.model_config, self.base, self.tokenizer, self.reward, self.config = (
            model_config, shard_params(base, self.mesh), tokenizer, reward, config)
        self._reward_arrays = (shard_params(reward.arrays(), self.mesh) if isinstance(reward, ModelReward)
                               else None)
        self.sampling = dataclasses.replace(config.sampling, pad_id=int(tokenizer.pad_token_id)) \
            if config.sampling.pad_id is None else config.sampling
        self.prompt_texts = list(prompts)
        self._prepare_prompts()
        self.optimizer = make_optimizer(config.optim)
        critic_lora = config.critic_lora
        if config.critic_init == "reward":
            if not isinstance(reward, ModelReward) or reward.base is not None or reward.reward_model.lora is None:
                raise ValueError("critic_init='reward' needs a ModelReward with a LoRA adapter sharing the "
                                 "policy's base; use critic_init='zero' otherwise")
            if critic_lora is not None:  # a full critic (None) stays full
                critic_lora = reward.reward_model.lora
        self.critic_lora = critic_lora
        step, self.kl_controller = make_ppo_step(model_config, config, self.optimizer,
                                                 reward if isinstance(reward, ModelReward) else None, critic_lora)
        self.sampler = Sampler(Transformer(model_config, lora=config.policy_lora), self.sampling)
        self.state = shard_params(self.init_state(), self.mesh)
        self._step = jit_step(step, self.mesh, self.state)

    def _prepare_prompts(self):
        cfg, mc = self.config, self.model_config
        limit = cfg.max_prompt_length or (mc.max_position_embeddings - self.sampling.max_new_tokens)
        ids = self.tokenizer(self.prompt_texts)["input_ids"]
        self.truncated_prompts = sum(len(x) > limit for x in ids)
        ids = [x[-limit:] for x in ids]
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise ValueError(f"PPOTrainer: prompts {empty[:10]} tokenise to nothing")
        self.prompts = left_pad(ids, pad_id=int(self.tokenizer.pad_token_id), bucket=16, max_length=limit)
        if self.truncated_prompts:
            print(f"PPOTrainer: {self.truncated_prompts} prompts longer than {limit} tokens were cut from the left")

    def init_state(self) -> PPOState:
        cfg = self.config
        key = jax.random.PRNGKey(cfg.run.seed)
        copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # own buffers: the step donates the state
        if cfg.policy_lora is None:
            policy = copy(self.base)
        else:
            policy = init_lora(Transformer(self.model_config, lora=cfg.policy_lora), jax.random.fold_in(key, 1))
        if cfg.critic_init == "reward":
            rm = self.reward.reward_model
            head = {"kernel": rm.params["head"]["kernel"] * rm.gain,
                    "bias": rm.params["head"]["bias"] * rm.gain + rm.bias}
            if self.critic_lora is None:
                critic = {"params": copy(merge_lora(self.base, rm.params["lora"], scale=rm.lora.scale))}
            else:
                critic = {"lora": copy(rm.params["lora"])}
            critic["head"] = jax.tree_util.tree_map(jnp.asarray, head)
        elif self.critic_lora is None:
            critic = {"params": copy(self.base), "head": init_head(key, self.model_config.hidden_size, std=0.0)}
        else:
            critic = {"lora": init_lora(Transformer(self.model_config, lora=self.critic_lora), jax.random.fold_in(key, 2)),
                      "head": init_head(key, self.model_config.hidden_size, std=0.0)}
        params = {"policy": policy, "critic": critic}
        return PPOState(jnp.zeros((), jnp.int32), params, self.optimizer.init(params), self.kl_controller.init(),
                        jax.random.fold_in(key, 3), jnp.zeros((), jnp.int32))

    def held_arrays(self) -> dict:
        """Every array the run holds: one base, the reward model's own arrays, the PPO state (with
        full fine-tuning, its copies of the base and their optimizer state)."""
        reward = self.reward.arrays() if isinstance(self.reward, ModelReward) else {}
        return {"base": self.base, "reward": reward, "state": self.state, "prompts": tuple(self.prompts[:2])}

    def rollout(self, state: PPOState, step: int) -> tuple[Rollout, np.ndarray]:
        cfg = self.config
        idx = batch_indices(step, self.prompts.tokens.shape[0], cfg.batch_size, cfg.run.seed)
        key = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0)
        tokens, mask = shard_batch((self.prompts.tokens[idx], self.prompts.mask[idx]), self.mesh)
        ro = self.sampler(policy_variables(self.base, state.params["policy"], cfg.policy_lora), tokens, mask, key)
        return ro, idx

    def texts(self, ro: Rollout, *, skip_special_tokens: bool = True) -> list[str]:
        return decode_responses(self.tokenizer, ro.response_tokens, ro.response_mask,
                                skip_special_tokens=skip_special_tokens)

    def train_step(self, step: int) -> dict:
        ro, idx = self.rollout(self.state, step)
        prompts = [self.prompt_texts[i] for i in idx]
        ext = None
        if isinstance(self.reward, TextReward):
            ext = jnp.asarray(self.reward(prompts, self.texts(ro)))
        arrays = self._reward_arrays
        watched = {}
        if self.monitors:
            texts = self.texts(ro, skip_special_tokens=False)
            watched = {k: float(np.mean(fn(prompts, texts))) for k, fn in self.monitors.items()}
        self.state, metrics = self._step(self.state, self.base, arrays, shard_batch(ro, self.mesh), ext)
        return dict(metrics, **watched)

    def train(self, *, callback: Callable[[int, dict], None] | None = None) -> PPOResult:
        cfg = self.config
        ckpt = Checkpoints(cfg.run)
        self.state, start = ckpt.resume(self.state)
        logger = MetricsLogger(cfg.run, name="ppo", keys=("score", "kl", "beta"), total=cfg.run.max_steps, initial=start)
        reason = "max_steps"
        for step in range(start, cfg.run.max_steps):
            row = logger.log(step, self.train_step(step))
            ckpt.maybe_save(step + 1, self.state)
            if callback is not None:
                callback(step, row)
            if cfg.reward_threshold is not None and len(logger.history) >= cfg.threshold_window:
                recent = np.mean([r["score"] for r in logger.history[-cfg.threshold_window:]])
                if recent >= cfg.reward_threshold:
                    reason = f"reward_threshold ({recent:.3f} >= {cfg.reward_threshold})"
                    ckpt.maybe_save(step + 1, self.state, force=True)
                    break
        logger.close(plot_keys=("score", "kl", "reward_total", "entropy", "response_length", "beta"))
        ckpt.close()
        return PPOResult(self.state, logger.history, reason)
