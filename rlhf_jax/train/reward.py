"""Reward model: base + reward LoRA (or full fine-tuning) + a scalar score head on the last real
token, trained on preference pairs (Bradley-Terry) or K-way rankings; then normalised so the SFT
model's own samples score mean 0, standard deviation 1 (gain and bias, as Ziegler et al. 2019)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.feedback.batches import BatchConfig, encode_pairs, encode_rankings
from rlhf_jax.lora import LoraConfig, _flatten, _unflatten, init_lora
from rlhf_jax.losses import bradley_terry_loss, ranking_loss
from rlhf_jax.model import ModelConfig, Transformer, init_head, score_head
from rlhf_jax.sharding import jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.train.run import Checkpoints, MetricsLogger, RunConfig
from rlhf_jax.train.state import (OptimConfig, TrainState, batch_indices, guarded_update, init_state, make_optimizer,
                                  trim_padding)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Reward-model training."""

    lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The reward adapter over the shared base; ``None``: fine-tune a full copy of the base."""
    loss: str = "pairwise"
    """``"pairwise"`` (Bradley-Terry on pairs) or ``"ranking"`` (InstructGPT's K-way loss)."""
    batch_size: int = 16
    """Pairs (or ranked prompts) per update."""
    max_length: int = 64
    """Context length of prompt + completion."""
    use_margin: bool = False
    """Subtract each pair's ``margin`` column inside the sigmoid."""
    center_coef: float = 0.0
    """Weight of the reward-centring term ``(r_c + r_r)^2``."""
    pad_multiple: int = 8
    """Each batch is cut to its longest sequence, rounded up to a multiple of this (a few
    compiled shapes, no work on columns that are padding in every row); ``0``: every batch keeps
    the data's full width (one shape)."""
    eval_fraction: float = 0.1
    """Share of the data held out for pair accuracy."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-3)
    """Optimizer."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    def __post_init__(self):
        if self.loss not in ("pairwise", "ranking"):
            raise ValueError(f"RewardConfig.loss must be 'pairwise' or 'ranking', got {self.loss!r}")


class RewardModel(NamedTuple):
    """A trained reward model: ``score = gain * (h_last . w + b) + bias``."""

    params: dict
    """``{"lora": adapter, "head": head}`` over the shared base, or ``{"params": full, "head": head}``."""
    gain: float = 1.0
    """Normalisation gain (1 / std of the SFT samples' raw scores)."""
    bias: float = 0.0
    """Normalisation bias (-mean / std)."""
    lora: LoraConfig | None = None
    """The adapter's config (``None`` for a full model)."""

    def scores(self, model_config: ModelConfig, base: dict | None, input_ids, attention_mask):
        """Normalised scores ``[B]`` (pure; jit it or call it inside a jitted step)."""
        return self.gain * raw_scores(model_config, self.lora, base, self.params, input_ids, attention_mask) + self.bias


def raw_scores(model_config: ModelConfig, lora: LoraConfig | None, base: dict | None, rm_params: dict,
               input_ids, attention_mask):
    """Un-normalised scores ``[B]`` read at each row's last real token."""
    model = Transformer(model_config, lora=lora)
    if "lora" in rm_params:
        variables = {"params": base, "lora": rm_params["lora"]}
    else:
        variables = {"params": rm_params["params"]}
    hidden = model.apply(variables, input_ids, attention_mask=attention_mask, return_hidden=True,
                         compute_logits=False).hidden
    return score_head(rm_params["head"], hidden, attention_mask)


def make_reward_step(model_config: ModelConfig, lora: LoraConfig | None, optimizer, config: RewardConfig):
    """Unjitted ``step(state, batch, base) -> (state, metrics)`` and ``evaluate(params, batch, base)``
    for pair batches (``input_ids [B, 2, T]``) or ranking batches (``[B, K, T]``)."""

    def loss_fn(params, batch, base):
        b, k, t = batch["input_ids"].shape
        r = raw_scores(model_config, lora, base, params, batch["input_ids"].reshape(b * k, t),
                       batch["attention_mask"].reshape(b * k, t)).reshape(b, k)
        if config.loss == "pairwise":
            margin = batch["margin"] if config.use_margin else None
            return bradley_terry_loss(r[:, 0], r[:, 1], margin=margin, center_coef=config.center_coef)
        return ranking_loss(r, batch["ranks"], batch["valid"])

    def step(state: TrainState, batch, base=None):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, base)
        params, opt_state, skipped = guarded_update(state.params, state.opt_state, grads, loss, optimizer)
        metrics = dict(metrics, loss=loss, skipped=state.skipped + skipped)
        return TrainState(state.step + 1, params, opt_state, state.rng, state.skipped + skipped), metrics

    def evaluate(params, batch, base=None):
        return loss_fn(params, batch, base)

    return step, evaluate


class RewardResult(NamedTuple):
    reward_model: RewardModel
    history: list[dict]
    eval: dict
    """Held-out ``eval_accuracy`` and ``eval_loss``."""
    report: Any
    """The :class:`rlhf_jax.feedback.BatchReport` of the tokenisation (what was skipped)."""


def _encode(tokenizer, data, config: RewardConfig):
    bc = BatchConfig(max_length=config.max_length)
    if config.loss == "pairwise":
        batch, report = encode_pairs(tokenizer, data, config=bc)
        arrays = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "margin": batch.margin}
    else:
        batch, report = encode_rankings(tokenizer, list(data), config=bc)
        arrays = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "ranks": batch.ranks, "valid": batch.valid}
    return arrays, report


def train_reward_model(model_config: ModelConfig, base: dict, tokenizer, data: Sequence[Any],
                       config: RewardConfig) -> RewardResult:
    """Train a reward model over ``base``.

    Args:
      data: pairs (rows with ``prompt``, ``chosen``, ``rejected`` [, ``margin``], e.g. the
        ``datasets.Dataset`` of :func:`rlhf_jax.feedback.rankings_to_pairs`) for ``loss="pairwise"``;
        ranked items (``prompt``, ``completions``, ``ranks``) for ``loss="ranking"``.
    """
    arrays, report = _encode(tokenizer, data, config)
    n = arrays["input_ids"].shape[0]
    n_eval = int(round(n * config.eval_fraction))
    order = np.random.default_rng(config.run.seed).permutation(n)
    train = {k: v[order[n_eval:]] for k, v in arrays.items()}
    held = {k: v[order[:n_eval]] for k, v in arrays.items()}

    key = jax.random.PRNGKey(config.run.seed + 1)
    head = init_head(jax.random.fold_in(key, 1), model_config.hidden_size)
    if config.lora is not None:
        params = {"lora": init_lora(Transformer(model_config, lora=config.lora), key), "head": head}
        shared = base
    else:  # full fine-tuning trains its own copy of the base
        params = {"params": jax.tree_util.tree_map(jnp.copy, base), "head": head}
        shared = None
    mesh = None if config.run.mesh is None else make_mesh(config.run.mesh)
    shared = shard_params(shared, mesh)
    optimizer = make_optimizer(config.optim)
    step_fn, eval_fn = make_reward_step(model_config, config.lora, optimizer, config)
    state = shard_params(init_state(params, optimizer, config.run.seed), mesh)
    step_fn, eval_fn = jit_step(step_fn, mesh, state), jax.jit(eval_fn)
    ckpt = Checkpoints(config.run)
    state, start = ckpt.resume(state)
    logger = MetricsLogger(config.run, name="reward", keys=("loss", "accuracy"), total=config.run.max_steps,
                           initial=start)

    def evaluate(p):
        if n_eval == 0:
            return {}
        accs, losses, counts = [], [], []
        for i in range(0, n_eval, config.batch_size):
            part = _batch(held, slice(i, i + config.batch_size), config.pad_multiple)
            loss, m = eval_fn(p, part, shared)
            accs.append(float(m["accuracy"]))
            losses.append(float(loss))
            counts.append(part["input_ids"].shape[0])
        w = np.asarray(counts, np.float64) / sum(counts)
        return {"eval_accuracy": float(np.dot(w, accs)), "eval_loss": float(np.dot(w, losses))}

    for step in range(start, config.run.max_steps):
        idx = batch_indices(step, train["input_ids"].shape[0], config.batch_size, config.run.seed)
        state, metrics = step_fn(state, shard_batch(_batch(train, idx, config.pad_multiple), mesh), shared)
        logger.log(step, metrics)
        ckpt.maybe_save(step + 1, state)
    final = evaluate(state.params)
    logger.close(plot_keys=("loss", "accuracy"))
    ckpt.close()
    return RewardResult(RewardModel(state.params, lora=config.lora), logger.history, final, report)


def _batch(arrays: dict, idx, pad_multiple: int) -> dict:
    rows = trim_padding({k: v[idx] for k, v in arrays.items()}, multiple=pad_multiple)
    return {k: jnp.asarray(v) for k, v in rows.items()}


def normalize_reward_model(rm: RewardModel, raw: np.ndarray) -> RewardModel:
    """Gain and bias so that ``raw`` (the raw scores of the SFT model's own samples) has mean 0
    and standard deviation 1 after normalisation."""
    raw = np.asarray(raw, np.float64)
    if raw.size < 2:
        raise ValueError("normalize_reward_model needs at least 2 scores")
    mean, std = float(raw.mean()), float(raw.std())
    std = std if std > 1e-8 else 1.0
    return rm._replace(gain=1.0 / std, bias=-mean / std)


def save_reward_model(path: str, rm: RewardModel) -> None:
    """``reward_model.safetensors`` (adapter/full weights and head) + ``reward_config.json``."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    flat = {"/".join(k): np.asarray(v, np.float32) for k, v in _flatten(rm.params).items()}
    save_file(flat, os.path.join(path, "reward_model.safetensors"))
    meta = {"gain": rm.gain, "bias": rm.bias,
            "lora": None if rm.lora is None else dataclasses.asdict(rm.lora)}
    with open(os.path.join(path, "reward_config.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_reward_model(path: str) -> RewardModel:
    from safetensors.numpy import load_file

    with open(os.path.join(path, "reward_config.json")) as f:
        meta = json.load(f)
    flat = load_file(os.path.join(path, "reward_model.safetensors"))
    params = _unflatten({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
    lora = None if meta["lora"] is None else LoraConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                           for k, v in meta["lora"].items()})
    return RewardModel(params, gain=meta["gain"], bias=meta["bias"], lora=lora)
