"""Supervised fine-tuning: causal-LM loss on the completion tokens only (prompt tokens masked),
full fine-tuning or LoRA; ends by handing back the base for RLHF (the adapter merged in)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.feedback.batches import BatchConfig, encode_sequences
from rlhf_jax.lora import LoraConfig, init_lora, merge_lora
from rlhf_jax.losses import masked_mean, token_logprobs
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.sharding import jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.train.run import Checkpoints, MetricsLogger, RunConfig
from rlhf_jax.train.state import (OptimConfig, TrainState, batch_indices, guarded_update, init_state, make_optimizer,
                                  trim_padding)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Supervised fine-tuning on prompt/completion pairs."""

    lora: LoraConfig | None = None
    """Train a LoRA adapter (merged into the base at the end); ``None``: full fine-tuning."""
    batch_size: int = 16
    """Sequences per update."""
    max_length: int = 64
    """Context length; longer prompts are cut from the left, too-long completions skipped (counted)."""
    append_eos: bool = True
    """Append the tokenizer's EOS to every completion (off when the texts already end with it)."""
    pad_multiple: int = 8
    """Each batch is cut to its longest sequence, rounded up to a multiple of this (a few
    compiled shapes, no work on columns that are padding in every row); ``0``: every batch keeps
    the data's full width (one shape)."""
    eval_fraction: float = 0.1
    """Share of the pairs held out for the evaluation loss and perplexity."""
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end)."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-3)
    """Optimizer."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""


class SFTData(NamedTuple):
    """Tokenised SFT examples, left padded: ``loss_mask`` marks the completion (+ EOS) tokens."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray


class SFTResult(NamedTuple):
    params: dict
    """The new base: full weights, with the adapter merged in when LoRA was used."""
    lora: dict | None
    """The trained adapter (before merging), if any."""
    history: list[dict]
    """Per-step metrics."""
    eval: dict
    """Final held-out ``eval_loss`` and ``eval_perplexity``."""
    skipped_examples: int
    """Examples that did not fit ``max_length`` (never silently dropped)."""


def encode_sft(tokenizer, prompts: Sequence[str], completions: Sequence[str], *, max_length: int,
               append_eos: bool = True) -> tuple[SFTData, Any]:
    """Tokenise ``prompt + completion (+ eos)``, left padded; the loss mask covers the completion
    (and the EOS). Returns the data and the :class:`rlhf_jax.feedback.BatchReport` of what was
    truncated or skipped."""
    cfg = BatchConfig(max_length=max_length, append_eos=append_eos, overflow="truncate_left")
    batch, report = encode_sequences(tokenizer, prompts, completions, config=cfg)
    kept = list(report.kept_indices)
    clen = np.array([len(tokenizer([completions[i]], add_special_tokens=False)["input_ids"][0]) + append_eos
                     for i in kept], np.int32)
    t = np.arange(batch.input_ids.shape[1])[None]
    last = batch.last_token_index[:, None]
    loss_mask = ((t > last - clen[:, None]) & (t <= last)).astype(np.int32)
    return SFTData(batch.input_ids, batch.attention_mask, loss_mask), report


def lm_loss(logits, input_ids, loss_mask):
    """Mean next-token negative log-likelihood over the tokens where ``loss_mask`` is 1 (token mean)."""
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    mask = loss_mask[:, 1:]
    nll = -masked_mean(logp, mask)
    return nll, {"loss": nll, "tokens": jnp.sum(mask)}


def make_sft_step(model: Transformer, optimizer):
    """Unjitted ``step(state, batch, base) -> (state, metrics)`` and ``evaluate(trainable, batch,
    base) -> (nll sum, token count)``. With a ``base`` tree the trainable tree is a LoRA adapter
    over it; with ``base=None`` the trainable tree is the full parameter tree. The base is an
    argument (never a closed-over constant), so jit compiles it as an input buffer."""

    def variables(trainable, base):
        return {"params": trainable} if base is None else {"params": base, "lora": trainable}

    def loss_fn(trainable, batch, key, base):
        logits = model.apply(variables(trainable, base), batch.input_ids, attention_mask=batch.attention_mask,
                             deterministic=False, rngs={"dropout": key}).logits
        return lm_loss(logits, batch.input_ids, batch.loss_mask)

    def step(state: TrainState, batch: SFTData, base=None):
        key = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, base)
        params, opt_state, skipped = guarded_update(state.params, state.opt_state, grads, loss, optimizer)
        metrics = dict(metrics, skipped=state.skipped + skipped)
        return TrainState(state.step + 1, params, opt_state, state.rng, state.skipped + skipped), metrics

    def evaluate(trainable, batch: SFTData, base=None):
        logits = model.apply(variables(trainable, base), batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])
        mask = batch.loss_mask[:, 1:]
        return jnp.sum(-logp * mask), jnp.sum(mask)

    return step, evaluate


def _rows(data: SFTData, idx, pad_multiple: int = 0) -> SFTData:
    rows = trim_padding(SFTData(*(x[idx] for x in data)), multiple=pad_multiple)
    return SFTData(*(jnp.asarray(x) for x in rows))


def train_sft(model_config: ModelConfig, params: dict, tokenizer, prompts: Sequence[str],
              completions: Sequence[str], config: SFTConfig) -> SFTResult:
    """Fine-tune ``params`` on ``prompt -> completion`` pairs; see :class:`SFTConfig`."""
    data, report = encode_sft(tokenizer, prompts, completions, max_length=config.max_length,
                              append_eos=config.append_eos)
    n = data.input_ids.shape[0]
    n_eval = int(round(n * config.eval_fraction))
    order = np.random.default_rng(config.run.seed).permutation(n)
    train = SFTData(*(x[order[n_eval:]] for x in data))
    held = SFTData(*(x[order[:n_eval]] for x in data))

    use_lora = config.lora is not None
    model = Transformer(model_config, lora=config.lora)
    # full fine-tuning trains a copy: the step donates its state, the caller keeps ``params``
    trainable = (init_lora(model, jax.random.PRNGKey(config.run.seed + 1)) if use_lora
                 else jax.tree_util.tree_map(jnp.copy, params))
    mesh = None if config.run.mesh is None else make_mesh(config.run.mesh)
    base = shard_params(params, mesh) if use_lora else None
    optimizer = make_optimizer(config.optim)
    step_fn, eval_fn = make_sft_step(model, optimizer)
    state = shard_params(init_state(trainable, optimizer, config.run.seed), mesh)
    step_fn = jit_step(step_fn, mesh, state)
    eval_fn = jax.jit(eval_fn)

    ckpt = Checkpoints(config.run)
    state, start = ckpt.resume(state)
    logger = MetricsLogger(config.run, name="sft", keys=("loss", "eval_loss"), total=config.run.max_steps,
                           initial=start)

    def evaluate(trainable):
        if n_eval == 0:
            return {}
        tot, cnt = 0.0, 0.0
        for i in range(0, n_eval, config.batch_size):
            s, c = eval_fn(trainable, _rows(held, slice(i, i + config.batch_size), config.pad_multiple), base)
            tot, cnt = tot + float(s), cnt + float(c)
        loss = tot / max(cnt, 1.0)
        return {"eval_loss": loss, "eval_perplexity": float(np.exp(loss))}

    for step in range(start, config.run.max_steps):
        idx = batch_indices(step, train.input_ids.shape[0], config.batch_size, config.run.seed)
        state, metrics = step_fn(state, shard_batch(_rows(train, idx, config.pad_multiple), mesh), base)
        if config.eval_every and (step + 1) % config.eval_every == 0:
            metrics = dict(metrics, **evaluate(state.params))
        logger.log(step, metrics)
        ckpt.maybe_save(step + 1, state)
    final_eval = evaluate(state.params)
    if final_eval and logger.history:
        logger.history[-1].update(final_eval)
    logger.close(plot_keys=("loss", "eval_loss"))
    ckpt.close()
    new_base = merge_lora(params, state.params, scale=config.lora.scale) if use_lora else state.params
    return SFTResult(new_base, state.params if use_lora else None, logger.history, final_eval, report.skipped)
