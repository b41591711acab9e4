"""Running GRPO, RLOO or REINFORCE++ on prompts: each step samples ``group_size`` completions for
each of ``batch_size`` prompts with the jitted sampler, scores them with a scorer, and hands a
:class:`GroupBatch` to :func:`rlhf_jax.train.fit`. Prompts are read like PPO's
(:func:`rlhf_jax.train.prepare_prompts`: any prompt-bearing format, conversations rendered with the
chat template, generation stopping at its end of turn), or given as lists of token ids."""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import lora_config_of, model_variables
from rlhf_jax.model import ModelConfig
from rlhf_jax.data import DataConfig, EncodeReport
from rlhf_jax.rollout import EncodedPrompts, Sampler, SamplingConfig, cached_sampler, decode_responses, left_pad
from rlhf_jax.scoring import Completions, Scorer, as_scorer
from rlhf_jax.sharding import shard_batch
from rlhf_jax.train.algorithm import Algorithm, cached_algorithm
from rlhf_jax.train.batching import batch_indices, check_context
from rlhf_jax.train.critic_free.algorithm import GroupBatch, make_grpo, make_reinforce_pp, make_rloo
from rlhf_jax.train.critic_free.config import CriticFreeConfig, GRPOConfig, ReinforcePPConfig, RLOOConfig
from rlhf_jax.train.fit import FitContext, fit
from rlhf_jax.train.ppo.driver import threshold_stop
from rlhf_jax.train.prompt_data import prepare_prompts, resolve_sampling
from rlhf_jax.train.state import TrainState

Monitor = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]

_ALGORITHMS = {GRPOConfig: ("grpo", make_grpo), RLOOConfig: ("rloo", make_rloo),
               ReinforcePPConfig: ("reinforce_pp", make_reinforce_pp)}


class CriticFreeRun(NamedTuple):
    """Everything a ``train_*`` driver hands to :func:`rlhf_jax.train.fit` (drive the algorithm
    from your own loop with it, or time its parts)."""

    algorithm: Algorithm
    """The ``(init, step)`` pair (built once per setup: the step compiles once per process)."""
    state: TrainState
    """The initial state (policy = reference)."""
    batches: Callable[[int, FitContext], tuple[GroupBatch, dict]]
    """``(step, ctx) -> (GroupBatch, host metrics)``: ``group_size`` samples of each of step
    ``step``'s prompts, their scores, the reward parts and monitors."""
    prompts: EncodedPrompts
    """The prompts, tokenised and left padded once."""
    sampler: Sampler
    """The policy's jitted sampler."""
    name: str
    """``"grpo"``, ``"rloo"`` or ``"reinforce_pp"`` (the metrics prefix)."""
    sampling: SamplingConfig
    """The sampling config in use (``pad_id`` and the stop tokens filled in)."""
    report: EncodeReport | None
    """What was read, truncated and skipped (``None`` for prompts given as token ids)."""


class CriticFreeResult(NamedTuple):
    state: TrainState
    history: list[dict]
    stop_reason: str
    sampling: SamplingConfig
    """The sampling config the policy was trained with (for the exported generation config)."""
    report: EncodeReport | None
    """What was read from the prompts (``None`` for token ids)."""


def _is_ids(p) -> bool:
    return isinstance(p, (list, tuple, np.ndarray)) and len(p) > 0 and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in p)


def _encode_ids(model_config: ModelConfig, tokenizer, prompts: list, config: CriticFreeConfig, *, who: str):
    """Prompts given as token-id lists: left padded as they are (a longer one keeps its last
    tokens, counted), decoded (special tokens skipped) for the scorers."""
    sampling = resolve_sampling(config.sampling, tokenizer, model_config)
    check_context(model_config, who=who, prompt_length=config.max_prompt_length, new_tokens=sampling.max_new_tokens)
    limit = config.max_prompt_length or (model_config.max_position_embeddings - sampling.max_new_tokens)
    if limit < 1:
        raise ValueError(f"{who}: no room for a prompt (limit {limit} tokens): lower max_new_tokens")
    ids = [[int(t) for t in p] for p in prompts]
    truncated = sum(len(x) > limit for x in ids)
    if truncated:
        print(f"{who}: {truncated} prompts longer than {limit} tokens keep their last {limit}", file=sys.stderr)
    batch = left_pad([x[-limit:] for x in ids], pad_id=sampling.pad_id, max_length=limit)
    shown = [tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    return EncodedPrompts(batch, truncated), shown, sampling


def prepare_critic_free(model_config: ModelConfig, base: dict, tokenizer, prompts: Any,
                        reward: Scorer | Any, config: CriticFreeConfig, *,
                        monitors: dict[str, Monitor] | None = None,
                        data_config: DataConfig = DataConfig()) -> CriticFreeRun:
    """The pieces of a GRPO / RLOO / REINFORCE++ run, picked by the config's type (see
    :func:`train_grpo` for the arguments)."""
    if type(config) not in _ALGORITHMS:
        raise TypeError(f"config must be a GRPOConfig, RLOOConfig or ReinforcePPConfig, got {type(config).__name__}")
    name, make = _ALGORITHMS[type(config)]
    scorer = as_scorer(reward, model_config)
    listed = isinstance(prompts, (list, tuple))
    if listed and not prompts:
        raise ValueError(f"{name}: no prompts")
    if listed and all(_is_ids(p) for p in prompts):
        encoded, shown, sampling = _encode_ids(model_config, tokenizer, list(prompts), config, who=name)
        report = None
    else:
        if listed and any(_is_ids(p) for p in prompts):
            raise ValueError(f"{name}: prompts mix token-id lists with other rows; give one kind")
        data = prepare_prompts(model_config, tokenizer, prompts, config.sampling, data_config=data_config,
                               max_prompt_length=config.max_prompt_length, who=name)
        encoded, shown, sampling, report = data.encoded, data.prompts, data.sampling, data.report
    n = encoded.batch.tokens.shape[0]
    if n < config.batch_size:
        raise ValueError(f"{name}: {n} prompts are fewer than batch_size {config.batch_size}; lower batch_size")
    algo = cached_algorithm(make, model_config, config)
    state = algo.init(jax.random.PRNGKey(config.run.seed), base)
    sampler = cached_sampler(model_config, lora_config_of(state.params), sampling)
    monitors = dict(monitors or {})
    g = config.group_size

    def batches(step: int, ctx: FitContext):
        idx = np.repeat(batch_indices(step, n, config.batch_size, config.run.seed), g)  # each prompt G times
        rng = jax.random.fold_in(jax.random.fold_in(ctx.state.rng, step), 0)
        tokens, mask = shard_batch((encoded.batch.tokens[idx], encoded.batch.mask[idx]), ctx.mesh)
        ro = sampler(model_variables(ctx.base, ctx.state.params), tokens, mask, rng)
        texts = decode_responses(tokenizer, ro.response_tokens, ro.response_mask, skip_special_tokens=True)
        batch_prompts = [shown[i] for i in idx]
        scores, parts = scorer.score_and_parts(Completions(batch_prompts, texts, ro.tokens, ro.attention_mask),
                                               ctx.base)
        extra = {f"reward/{k}": float(np.mean(v)) for k, v in parts.items()}
        if monitors:
            out = decode_responses(tokenizer, ro.response_tokens, ro.response_mask, skip_special_tokens=False)
            extra.update({k: float(np.mean(fn(batch_prompts, out))) for k, fn in monitors.items()})
        return GroupBatch(ro, jnp.asarray(scores, jnp.float32)), extra

    return CriticFreeRun(algo, state, batches, encoded, sampler, name, sampling, report)


def train_critic_free(model_config: ModelConfig, base: dict, tokenizer, prompts: Any,
                      reward: Scorer | Any, config: CriticFreeConfig, *, monitors: dict[str, Monitor] | None = None,
                      callback: Callable[[int, dict], None] | None = None,
                      data_config: DataConfig = DataConfig()) -> CriticFreeResult:
    """Run the algorithm the config names (:class:`GRPOConfig`: GRPO, :class:`RLOOConfig`: RLOO,
    :class:`ReinforcePPConfig`: REINFORCE++) on ``prompts``; see :func:`train_grpo`."""
    run = prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                              data_config=data_config)
    stop = threshold_stop(config)

    def stop_and_callback(history):
        if callback is not None:
            callback(history[-1]["step"], history[-1])
        return None if stop is None else stop(history)

    res = fit(run.algorithm.step, run.state, base, run.batches, run=config.run, name=run.name,
              log_keys=("score", "kl", "zero_std_frac"),
              plot_keys=("score", "kl", "zero_std_frac", "entropy", "response_length", "clip_frac"),
              stop=stop_and_callback, record={"config": config, "data": run.prompts.batch.tokens})
    return CriticFreeResult(res.state, res.history, res.stop_reason, run.sampling, run.report)


def _checked(kind: type, config, who: str):
    if not isinstance(config, kind):
        raise TypeError(f"{who} needs a {kind.__name__}, got {type(config).__name__}")


def train_grpo(model_config: ModelConfig, base: dict, tokenizer, prompts: Any, reward: Scorer | Any,
               config: GRPOConfig, *, monitors: dict[str, Monitor] | None = None,
               callback: Callable[[int, dict], None] | None = None,
               data_config: DataConfig = DataConfig()) -> CriticFreeResult:
    """Run GRPO (:func:`rlhf_jax.train.make_grpo`) on ``prompts``.

    Args:
      model_config: the base's config.
      base: the frozen base (the SFT model, any SFT adapter merged in): the reference, never
        modified (full fine-tuning trains a copy of it).
      tokenizer: a ``transformers`` tokenizer with a pad token.
      prompts: any prompt-bearing dataset (a path, a ``datasets.Dataset``, rows; prompt-only,
        prompt-completion or preference, standard or conversational: conversations are rendered
        with the chat template and generation stops at its end of turn), a list of texts, or a list
        of token-id lists (decoded, special tokens skipped, for the scorers).
      reward: a :class:`rlhf_jax.scoring.Scorer`, a :class:`rlhf_jax.scoring.RewardModel` (on the
        shared base), or a Python ``fn(prompts, completions) -> scores`` (e.g.
        :func:`rlhf_jax.scoring.exact_match`); combine several with ``WeightedScorer``.
      config: the :class:`GRPOConfig`.
      monitors: ``{name: fn(prompts, completions) -> floats}`` logged each step, never trained on.
      callback: ``(step, metrics row) -> None`` after each step.
      data_config: how the prompts are read (format, split, chat template).
    """
    _checked(GRPOConfig, config, "train_grpo")
    return train_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                             callback=callback, data_config=data_config)


def train_rloo(model_config: ModelConfig, base: dict, tokenizer, prompts: Any, reward: Scorer | Any,
               config: RLOOConfig, *, monitors: dict[str, Monitor] | None = None,
               callback: Callable[[int, dict], None] | None = None,
               data_config: DataConfig = DataConfig()) -> CriticFreeResult:
    """Run RLOO (:func:`rlhf_jax.train.make_rloo`); arguments as :func:`train_grpo`."""
    _checked(RLOOConfig, config, "train_rloo")
    return train_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                             callback=callback, data_config=data_config)


def train_reinforce_pp(model_config: ModelConfig, base: dict, tokenizer, prompts: Any,
                       reward: Scorer | Any, config: ReinforcePPConfig, *,
                       monitors: dict[str, Monitor] | None = None,
                       callback: Callable[[int, dict], None] | None = None,
                       data_config: DataConfig = DataConfig()) -> CriticFreeResult:
    """Run REINFORCE++ (:func:`rlhf_jax.train.make_reinforce_pp`); arguments as :func:`train_grpo`."""
    _checked(ReinforcePPConfig, config, "train_reinforce_pp")
    return train_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                             callback=callback, data_config=data_config)


def prepare_grpo(model_config, base, tokenizer, prompts, reward, config: GRPOConfig, *, monitors=None,
                 data_config: DataConfig = DataConfig()) -> CriticFreeRun:
    """The pieces :func:`train_grpo` runs (for your own loop or a benchmark)."""
    _checked(GRPOConfig, config, "prepare_grpo")
    return prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                               data_config=data_config)


def prepare_rloo(model_config, base, tokenizer, prompts, reward, config: RLOOConfig, *, monitors=None,
                 data_config: DataConfig = DataConfig()) -> CriticFreeRun:
    """The pieces :func:`train_rloo` runs."""
    _checked(RLOOConfig, config, "prepare_rloo")
    return prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                               data_config=data_config)


def prepare_reinforce_pp(model_config, base, tokenizer, prompts, reward, config: ReinforcePPConfig, *,
                         monitors=None, data_config: DataConfig = DataConfig()) -> CriticFreeRun:
    """The pieces :func:`train_reinforce_pp` runs."""
    _checked(ReinforcePPConfig, config, "prepare_reinforce_pp")
    return prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                               data_config=data_config)
