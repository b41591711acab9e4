"""``train_dpo``: preference pairs -> a policy, with :func:`make_dpo` run by :func:`rlhf_jax.train.fit`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import numpy as np

from rlhf_jax.data import DataConfig
from rlhf_jax.model import ModelConfig
from rlhf_jax.train.algorithm import cached_algorithm
from rlhf_jax.train.batching import batch_indices
from rlhf_jax.train.dpo.algorithm import dpo_batch_loss, dpo_rows, make_dpo, precompute_reference
from rlhf_jax.train.dpo.config import DPOConfig
from rlhf_jax.train.dpo.data import encode_dpo_data
from rlhf_jax.train.fit import FitContext, fit
from rlhf_jax.train.run import RunConfig
from rlhf_jax.train.state import TrainState

EVAL_KEYS = ("loss", "accuracy", "margin", "rewards_chosen", "rewards_rejected", "logratio")


class DPOResult(NamedTuple):
    policy: Any
    """The trained policy: an :class:`rlhf_jax.lora.Adapter` over the base, or full weights."""
    state: TrainState
    """The final training state."""
    history: list[dict]
    """Per-step metrics (held-out ``eval_*`` rows every ``eval_every`` steps and at the end)."""
    eval: dict
    """Final held-out ``eval_loss``, ``eval_accuracy``, ``eval_margin``, ``eval_rewards_chosen``,
    ``eval_rewards_rejected``, ``eval_logratio`` (empty without held-out pairs)."""
    report: Any
    """The :class:`rlhf_jax.data.EncodeReport` of the encoding (what was truncated or skipped)."""
    stop_reason: str


def check_dpo_lengths(model_config: ModelConfig, config: DPOConfig) -> None:
    """Raise when prompt + completion do not fit the model's context, naming the numbers."""
    total, ctx = config.max_prompt_length + config.max_completion_length, model_config.max_position_embeddings
    if total > ctx:
        raise ValueError(f"dpo: max_prompt_length {config.max_prompt_length} + max_completion_length "
                         f"{config.max_completion_length} = {total} is beyond the model's context of {ctx} tokens "
                         f"(max_position_embeddings); lower --max_prompt_length or --max_completion_length")


@functools.lru_cache(maxsize=16)
def _jitted_eval(model_config: ModelConfig, config: DPOConfig):
    return jax.jit(lambda t, b, batch: dpo_batch_loss(model_config, config, t, b, batch))


def dpo_evaluate(model_config: ModelConfig, config: DPOConfig, trainable, base, arrays: dict) -> dict:
    """Held-out ``eval_*`` metrics (see :data:`EVAL_KEYS`) of ``trainable`` on host DPO arrays:
    means over pairs (``eval_logratio`` over tokens), in chunks of ``config.batch_size``."""
    n = arrays["prompt_ids"].shape[0]
    if n == 0:
        return {}
    fn = _jitted_eval(model_config, dataclasses.replace(config, run=RunConfig()))
    sums, pairs, tokens, ratio = dict.fromkeys(EVAL_KEYS, 0.0), 0, 0.0, 0.0
    for i in range(0, n, config.batch_size):
        part = dpo_rows(arrays, slice(i, i + config.batch_size), config.pad_multiple)
        loss, m = fn(trainable, base, part)
        m = dict(jax.device_get(m), loss=float(loss))
        rows, toks = part.prompt_ids.shape[0], float(part.completion_mask.sum())
        for k in EVAL_KEYS[:-1]:
            sums[k] += float(m[k]) * rows
        ratio += float(m["logratio"]) * max(toks, 1.0)
        pairs, tokens = pairs + rows, tokens + toks
    out = {f"eval_{k}": sums[k] / pairs for k in EVAL_KEYS[:-1]}
    out["eval_logratio"] = ratio / max(tokens, 1.0)
    return out


def train_dpo(model_config: ModelConfig, base: dict, tokenizer, data: Any, config: DPOConfig, *,
              data_config: DataConfig = DataConfig()) -> DPOResult:
    """Train a policy on preference pairs (DPO, IPO or cDPO, see :class:`DPOConfig`) against the
    frozen ``base`` as the reference.

    Args:
      data: a path (JSONL, JSON, Parquet, a ``save_to_disk`` folder), a ``datasets`` object or a
        list of rows, in any preference format of :func:`rlhf_jax.data.encode_preference_data`
        (explicit or implicit prompt, standard or conversational).
      data_config: how the pairs are read (forced format, split, chat template).
    """
    check_dpo_lengths(model_config, config)
    arrays, report = encode_dpo_data(tokenizer, data, config, data_config=data_config)
    n = arrays["prompt_ids"].shape[0]
    n_eval = int(round(n * config.eval_fraction))
    order = np.random.default_rng(config.run.seed).permutation(n)
    train = {k: v[order[n_eval:]] for k, v in arrays.items()}
    held = {k: v[order[:n_eval]] for k, v in arrays.items()}
    if n - n_eval < config.batch_size:
        raise ValueError(f"dpo: {n - n_eval} training pairs (after {report.n_skipped} skipped and {n_eval} held out) "
                         f"are fewer than batch_size {config.batch_size}; lower --batch_size or add data")
    if config.reference == "cached":  # the reference's log-probs once, before training
        for part in (train, held):
            if part["prompt_ids"].shape[0]:
                part["ref_logps"] = precompute_reference(model_config, base, part, batch_size=config.batch_size,
                                                         pad_multiple=config.pad_multiple)
    algo = cached_algorithm(make_dpo, model_config, config)
    state = algo.init(jax.random.PRNGKey(config.run.seed), base)

    def batches(step: int, ctx: FitContext):
        idx = batch_indices(step, n - n_eval, config.batch_size, config.run.seed)
        return dpo_rows(train, idx, config.pad_multiple), {}

    def evaluate(ctx: FitContext) -> dict:
        return dpo_evaluate(model_config, config, ctx.state.params, ctx.base, held)

    res = fit(algo.step, state, base, batches, run=config.run, name="dpo", log_keys=("loss", "accuracy"),
              plot_keys=("loss", "accuracy", "margin", "eval_accuracy"), evaluate=evaluate,
              eval_every=config.eval_every, record={"config": config, "data": arrays})
    return DPOResult(res.state.params, res.state, res.history, res.final_eval, report, res.stop_reason)
