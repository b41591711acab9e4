"""Running PPO on a prompt dataset: :func:`train_ppo` prepares the prompts
(:func:`rlhf_jax.train.prompt_data.prepare_prompts`: any prompt-bearing format, conversations
rendered with the chat template, stop tokens resolved), samples rollouts with the jitted sampler,
scores them with a scorer, and hands ``PPOBatch``es to :func:`rlhf_jax.train.fit`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data import DataConfig, EncodeReport
from rlhf_jax.lora import lora_config_of, model_variables
from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout import EncodedPrompts, Rollout, Sampler, SamplingConfig, cached_sampler, decode_responses
from rlhf_jax.scoring import Completions, Scorer, as_scorer, critic_from_reward
from rlhf_jax.sharding import shard_batch
from rlhf_jax.train.batching import batch_indices
from rlhf_jax.train.fit import FitContext, fit
from rlhf_jax.train.algorithm import Algorithm, cached_algorithm
from rlhf_jax.train.ppo.algorithm import PPOState, make_ppo
from rlhf_jax.train.ppo.config import PPOConfig
from rlhf_jax.train.ppo.experience import PPOBatch
from rlhf_jax.train.prompt_data import prepare_prompts, resolve_sampling  # noqa: F401 (re-exported by ppo)
from rlhf_jax.train.trainable import init_trainable

Monitor = Callable[[Sequence[Any], Sequence[str]], Sequence[float]] | Scorer
"""A text function ``fn(prompts, completions) -> floats`` or a :class:`rlhf_jax.scoring.Scorer`
(called with the rollouts' tokens and the shared base: a reward model kept out of the loss)."""


class PPOResult(NamedTuple):
    state: PPOState
    history: list[dict]
    stop_reason: str
    sampling: SamplingConfig | None = None
    """How the policy generated: the sampling config with its resolved pad id and stop tokens."""
    report: EncodeReport | None = None
    """How the prompt dataset was read."""


def metric_stop(key: str, threshold: float, *, window: int = 5, name: str | None = None):
    """A stop rule for :func:`train_ppo` (``stop=``): ``history -> reason`` once the mean of
    metric ``key`` over the last ``window`` steps reaches ``threshold``, e.g.
    ``metric_stop("overopt_gap", 0.5)`` stops when an over-optimisation monitor's gap reaches 0.5."""
    label = name or key

    def stop(history):
        if len(history) < window:
            return None
        recent = float(np.mean([r[key] for r in history[-window:]]))
        return f"{label} ({recent:.3f} >= {threshold})" if recent >= threshold else None

    return stop


def threshold_stop(config: PPOConfig, key: str = "score"):
    """``history -> reason`` once the mean ``key`` over the last ``threshold_window`` steps reaches
    ``reward_threshold`` (``None`` when no threshold is set)."""
    if config.reward_threshold is None:
        return None
    return metric_stop(key, config.reward_threshold, window=config.threshold_window, name="reward_threshold")


class PPORun(NamedTuple):
    """Everything :func:`train_ppo` hands to :func:`rlhf_jax.train.fit` (use it to drive PPO from
    your own loop, or to time its parts)."""

    algorithm: Algorithm
    """The ``(init, step)`` pair (built once per setup: the step compiles once per process)."""
    state: PPOState
    """The initial state (policy = reference; critic from the reward model or fresh)."""
    batches: Callable[[int, FitContext], tuple[PPOBatch, dict]]
    """``(step, ctx) -> (PPOBatch, host metrics)``: generation with ``sampler`` on step ``step``'s
    prompts, scoring, monitors."""
    prompts: EncodedPrompts
    """The prompts, tokenised and left padded once."""
    sampler: Sampler
    """The policy's jitted sampler (its config holds the resolved stop tokens)."""
    report: EncodeReport | None = None
    """How the prompt dataset was read (format, rows kept, truncated, skipped)."""


def reward_model_of(scorer: Scorer) -> tuple[Any, Scorer | None]:
    """``(reward model, its scorer)`` that PPO's critic starts from: the scorer's own, or the one
    model part of a weighted sum (its weight folded into the normalisation, so the critic's first
    values are that part of the score); ``(None, None)`` when there is none or several."""
    rm = getattr(scorer, "reward_model", None)
    if rm is not None:
        return rm, scorer
    parts = [(s, w) for s, w in getattr(scorer, "items", ()) if getattr(s, "reward_model", None) is not None]
    if len(parts) != 1:
        return None, None
    part, weight = parts[0]
    rm = part.reward_model
    return rm._replace(gain=weight * rm.gain, bias=weight * rm.bias), part


def prepare_ppo(model_config: ModelConfig, base: dict, tokenizer, prompts: Any, reward: Scorer | Any,
                config: PPOConfig, *, monitors: dict[str, Monitor] | None = None,
                data_config: DataConfig = DataConfig()) -> PPORun:
    """The pieces of a PPO run (see :func:`train_ppo` for the arguments)."""
    scorer = as_scorer(reward, model_config)
    data = prepare_prompts(model_config, tokenizer, prompts, config.sampling, data_config=data_config,
                           max_prompt_length=config.max_prompt_length, who="ppo")
    prompts, encoded, sampling = data.prompts, data.encoded, data.sampling
    n = encoded.batch.tokens.shape[0]
    if n < config.batch_size:
        raise ValueError(f"ppo: {n} prompts are fewer than batch_size {config.batch_size}; lower batch_size")
    algo = cached_algorithm(make_ppo, model_config, config)
    critic = None
    if config.critic_init == "reward":
        rm, part = reward_model_of(scorer)
        if rm is None:
            raise ValueError("critic_init='reward' needs a reward model (a RewardModel or ModelScorer reward, alone or "
                             "as the one model in a WeightedScorer); use critic_init='zero' with a reward function")
        if getattr(part, "model_config", model_config) != model_config:
            raise ValueError("critic_init='reward': the reward model is another network than the policy's base "
                             "(its own model config); the critic cannot start from it: use critic_init='zero'")
        critic = critic_from_reward(rm, base, full=config.critic_lora is None)
        if critic["model"] is None and config.critic_lora is not None:
            # a head on the shared base (e.g. a Hugging Face classifier with the base as its body): the
            # critic gets a fresh adapter (B = 0: its values start as the reward model's scores)
            critic["model"] = init_trainable(model_config, base, config.critic_lora,
                                             jax.random.fold_in(jax.random.PRNGKey(config.run.seed), 1))
    state = algo.init(jax.random.PRNGKey(config.run.seed), base, critic=critic)
    sampler = cached_sampler(model_config, lora_config_of(state.params["policy"]), sampling)
    monitors = dict(monitors or {})

    def batches(step: int, ctx: FitContext):
        idx = batch_indices(step, n, config.batch_size, config.run.seed)
        rng = jax.random.fold_in(jax.random.fold_in(ctx.state.rng, step), 0)
        tokens, mask = shard_batch((encoded.batch.tokens[idx], encoded.batch.mask[idx]), ctx.mesh)
        ro: Rollout = sampler(model_variables(ctx.base, ctx.state.params["policy"]), tokens, mask, rng)
        texts = decode_responses(tokenizer, ro.response_tokens, ro.response_mask, skip_special_tokens=True)
        batch_prompts = [prompts[i] for i in idx]
        scores, parts = scorer.score_and_parts(Completions(batch_prompts, texts, ro.tokens, ro.attention_mask),
                                               ctx.base)
        extra = {f"reward/{k}": float(np.mean(v)) for k, v in parts.items()}
        if monitors:
            shown = decode_responses(tokenizer, ro.response_tokens, ro.response_mask, skip_special_tokens=False)
            done = Completions(batch_prompts, texts, ro.tokens, ro.attention_mask)
            for k, fn in monitors.items():
                if isinstance(fn, Scorer):
                    values, parts = fn.score_and_parts(done, ctx.base)
                    extra.update({f"{k}/{p}": float(np.mean(v)) for p, v in parts.items()})
                else:
                    values = fn(batch_prompts, shown)
                extra[k] = float(np.mean(values))
        return PPOBatch(ro, jnp.asarray(scores, jnp.float32)), extra

    return PPORun(algo, state, batches, encoded, sampler, data.report)


def train_ppo(model_config: ModelConfig, base: dict, tokenizer, prompts: Any, reward: Scorer | Any,
              config: PPOConfig, *, monitors: dict[str, Monitor] | None = None,
              callback: Callable[[int, dict], None] | None = None, data_config: DataConfig = DataConfig(),
              stop: Callable[[list[dict]], str | None] | None = None) -> PPOResult:
    """Run PPO (see :func:`rlhf_jax.train.ppo.make_ppo`) on ``prompts``.

    Args:
      model_config: the base's config.
      base: the frozen base parameters (the SFT model, any SFT adapter merged in): the reference,
        never modified (a fully fine-tuned policy or critic trains a copy of it).
      tokenizer: a ``transformers`` tokenizer with a pad token.
      prompts: a list of prompt strings, or any dataset with prompts: prompt-only,
        prompt-completion or preference rows, standard or conversational, as a path (JSONL, JSON,
        Parquet, ``save_to_disk`` folder), a ``datasets.Dataset`` or a list of dicts.
        Conversations are rendered with the chat template and its generation prompt, and
        generation stops at the template's end of turn too (unless ``config.sampling.eos_ids`` is
        set); reward functions and monitors get the prompts as the data holds them.
      reward: a :class:`rlhf_jax.scoring.Scorer`, a :class:`rlhf_jax.scoring.RewardModel` (scored
        on the shared base), or a Python ``fn(prompts, completions) -> scores``.
      config: the :class:`PPOConfig`; ``critic_init="reward"`` needs a reward model.
      monitors: ``{name: monitor}`` run on each step's rollouts and logged as ``name`` (the
        batch mean), never used in the loss: watch a held-back judge while optimising the proxy.
        A monitor is a text function ``fn(prompts, completions) -> floats`` (completions decoded
        with special tokens kept; e.g. a gold rubric) or a :class:`rlhf_jax.scoring.Scorer` called
        with the rollouts' tokens and the shared base (e.g.
        :class:`rlhf_jax.scoring.GapMonitor`, held-out reward models), whose parts are logged as
        ``name/part``.
      callback: ``(step, metrics row) -> None`` after each step.
      data_config: ``format``, ``split``, ``chat_template`` of a prompt dataset.
      stop: ``history -> reason | None`` checked after each step, besides
        ``config.reward_threshold``; e.g. :func:`metric_stop` on a monitor.
    """
    run = prepare_ppo(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                      data_config=data_config)
    rules = [r for r in (threshold_stop(config), stop) if r is not None]

    def stop_and_callback(history):
        if callback is not None:
            callback(history[-1]["step"], history[-1])
        return next((why for why in (r(history) for r in rules) if why), None)

    res = fit(run.algorithm.step, run.state, base, run.batches, run=config.run, name="ppo",
              log_keys=("score", "kl", "beta"),
              plot_keys=("score", "kl", "reward_total", "entropy", "response_length", "beta"),
              stop=stop_and_callback, record={"config": config, "data": run.prompts.batch.tokens})
    return PPOResult(res.state, res.history, res.stop_reason, run.sampler.config, run.report)
