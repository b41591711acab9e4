"""Running GRPO, RLOO or REINFORCE++ on prompts: each step samples ``group_size`` completions for
each of ``batch_size`` prompts with the jitted sampler, scores them with a scorer, and hands a
:class:`GroupBatch` to :func:`rlhf_jax.train.fit`."""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import lora_config_of, model_variables
from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout import EncodedPrompts, Sampler, cached_sampler, decode_responses, encode_prompts, left_pad
from rlhf_jax.scoring import Completions, Scorer, as_scorer
from rlhf_jax.sharding import shard_batch
from rlhf_jax.train.algorithm import Algorithm, cached_algorithm
from rlhf_jax.train.batching import batch_indices, check_context
from rlhf_jax.train.critic_free.algorithm import GroupBatch, make_grpo, make_reinforce_pp, make_rloo
from rlhf_jax.train.critic_free.config import CriticFreeConfig, GRPOConfig, ReinforcePPConfig, RLOOConfig
from rlhf_jax.train.fit import FitContext, fit
from rlhf_jax.train.ppo.driver import resolve_sampling, threshold_stop
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


class CriticFreeResult(NamedTuple):
    state: TrainState
    history: list[dict]
    stop_reason: str


def _is_ids(p) -> bool:
    return isinstance(p, (list, tuple, np.ndarray)) and len(p) > 0 and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in p)


def _encode(tokenizer, prompts: list, *, limit: int, pad_id: int, who: str) -> tuple[EncodedPrompts, list]:
    """Texts (tokenised here) or token-id lists, left padded; the prompts the scorers see (texts:
    token ids are decoded, special tokens skipped)."""
    kinds = {_is_ids(p) for p in prompts}
    if kinds == {False}:
        if not all(isinstance(p, str) for p in prompts):
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)][:10]
            raise ValueError(f"{who}: prompts must be texts or lists of token ids; rows {bad} are neither (render "
                             "conversations with the chat template first)")
        return encode_prompts(tokenizer, prompts, limit=limit, pad_id=pad_id, who=who), prompts
    if kinds != {True}:
        raise ValueError(f"{who}: prompts mix texts and token-id lists; give one kind")
    if limit < 1:
        raise ValueError(f"{who}: no room for a prompt (limit {limit} tokens): lower max_new_tokens")
    ids = [[int(t) for t in p] for p in prompts]
    truncated = sum(len(x) > limit for x in ids)
    batch = left_pad([x[-limit:] for x in ids], pad_id=pad_id, max_length=limit)
    return EncodedPrompts(batch, truncated), [tokenizer.decode(x, skip_special_tokens=True) for x in ids]


def prepare_critic_free(model_config: ModelConfig, base: dict, tokenizer, prompts: Sequence[Any],
                        reward: Scorer | Any, config: CriticFreeConfig, *,
                        monitors: dict[str, Monitor] | None = None) -> CriticFreeRun:
    """The pieces of a GRPO / RLOO / REINFORCE++ run, picked by the config's type (see
    :func:`train_grpo` for the arguments)."""
    if type(config) not in _ALGORITHMS:
        raise TypeError(f"config must be a GRPOConfig, RLOOConfig or ReinforcePPConfig, got {type(config).__name__}")
    name, make = _ALGORITHMS[type(config)]
    prompts = list(prompts)
    scorer = as_scorer(reward, model_config)
    sampling = resolve_sampling(config.sampling, tokenizer)
    check_context(model_config, who=name, prompt_length=config.max_prompt_length,
                  new_tokens=sampling.max_new_tokens)
    limit = config.max_prompt_length or (model_config.max_position_embeddings - sampling.max_new_tokens)
    if not prompts:
        raise ValueError(f"{name}: no prompts")
    encoded, shown = _encode(tokenizer, prompts, limit=limit, pad_id=sampling.pad_id, who=name)
    if encoded.truncated:
        print(f"{name}: {encoded.truncated} prompts longer than {limit} tokens keep their last {limit}",
              file=sys.stderr)
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

    return CriticFreeRun(algo, state, batches, encoded, sampler, name)


def train_critic_free(model_config: ModelConfig, base: dict, tokenizer, prompts: Sequence[Any],
                      reward: Scorer | Any, config: CriticFreeConfig, *, monitors: dict[str, Monitor] | None = None,
                      callback: Callable[[int, dict], None] | None = None) -> CriticFreeResult:
    """Run the algorithm the config names (:class:`GRPOConfig`: GRPO, :class:`RLOOConfig`: RLOO,
    :class:`ReinforcePPConfig`: REINFORCE++) on ``prompts``; see :func:`train_grpo`."""
    run = prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors)
    stop = threshold_stop(config)

    def stop_and_callback(history):
        if callback is not None:
            callback(history[-1]["step"], history[-1])
        return None if stop is None else stop(history)

    res = fit(run.algorithm.step, run.state, base, run.batches, run=config.run, name=run.name,
              log_keys=("score", "kl", "zero_std_frac"),
              plot_keys=("score", "kl", "zero_std_frac", "entropy", "response_length", "clip_frac"),
              stop=stop_and_callback, record={"config": config, "data": run.prompts.batch.tokens})
    return CriticFreeResult(res.state, res.history, res.stop_reason)


def _checked(kind: type, config, who: str):
    if not isinstance(config, kind):
        raise TypeError(f"{who} needs a {kind.__name__}, got {type(config).__name__}")


def train_grpo(model_config: ModelConfig, base: dict, tokenizer, prompts: Sequence[Any], reward: Scorer | Any,
               config: GRPOConfig, *, monitors: dict[str, Monitor] | None = None,
               callback: Callable[[int, dict], None] | None = None) -> CriticFreeResult:
    """Run GRPO (:func:`rlhf_jax.train.make_grpo`) on ``prompts``.

    Args:
      model_config: the base's config.
      base: the frozen base (the SFT model, any SFT adapter merged in): the reference, never
        modified (full fine-tuning trains a copy of it).
      tokenizer: a ``transformers`` tokenizer with a pad token.
      prompts: texts (render chat templates first) or lists of token ids (decoded, special tokens
        skipped, for the scorers).
      reward: a :class:`rlhf_jax.scoring.Scorer`, a :class:`rlhf_jax.scoring.RewardModel` (on the
        shared base), or a Python ``fn(prompts, completions) -> scores`` (e.g.
        :func:`rlhf_jax.scoring.exact_match`); combine several with ``WeightedScorer``.
      config: the :class:`GRPOConfig`.
      monitors: ``{name: fn(prompts, completions) -> floats}`` logged each step, never trained on.
      callback: ``(step, metrics row) -> None`` after each step.
    """
    _checked(GRPOConfig, config, "train_grpo")
    return train_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                             callback=callback)


def train_rloo(model_config: ModelConfig, base: dict, tokenizer, prompts: Sequence[Any], reward: Scorer | Any,
               config: RLOOConfig, *, monitors: dict[str, Monitor] | None = None,
               callback: Callable[[int, dict], None] | None = None) -> CriticFreeResult:
    """Run RLOO (:func:`rlhf_jax.train.make_rloo`); arguments as :func:`train_grpo`."""
    _checked(RLOOConfig, config, "train_rloo")
    return train_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                             callback=callback)


def train_reinforce_pp(model_config: ModelConfig, base: dict, tokenizer, prompts: Sequence[Any],
                       reward: Scorer | Any, config: ReinforcePPConfig, *,
                       monitors: dict[str, Monitor] | None = None,
                       callback: Callable[[int, dict], None] | None = None) -> CriticFreeResult:
    """Run REINFORCE++ (:func:`rlhf_jax.train.make_reinforce_pp`); arguments as :func:`train_grpo`."""
    _checked(ReinforcePPConfig, config, "train_reinforce_pp")
    return train_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors,
                             callback=callback)


def prepare_grpo(model_config, base, tokenizer, prompts, reward, config: GRPOConfig, *, monitors=None
                 ) -> CriticFreeRun:
    """The pieces :func:`train_grpo` runs (for your own loop or a benchmark)."""
    _checked(GRPOConfig, config, "prepare_grpo")
    return prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors)


def prepare_rloo(model_config, base, tokenizer, prompts, reward, config: RLOOConfig, *, monitors=None
                 ) -> CriticFreeRun:
    """The pieces :func:`train_rloo` runs."""
    _checked(RLOOConfig, config, "prepare_rloo")
    return prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors)


def prepare_reinforce_pp(model_config, base, tokenizer, prompts, reward, config: ReinforcePPConfig, *,
                         monitors=None) -> CriticFreeRun:
    """The pieces :func:`train_reinforce_pp` runs."""
    _checked(ReinforcePPConfig, config, "prepare_reinforce_pp")
    return prepare_critic_free(model_config, base, tokenizer, prompts, reward, config, monitors=monitors)
