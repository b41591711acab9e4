"""Supervised fine-tuning: the causal-LM loss on the completion tokens only (prompt tokens masked),
a LoRA adapter or full fine-tuning; :func:`train_sft` ends by handing back the base for RLHF
(the adapter merged in)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from rlhf_jax.config_checks import at_least, in_range, multiple_of, one_of, positive
from rlhf_jax.feedback.batches import BatchConfig, encode_sequences
from rlhf_jax.lora import LoraConfig, lora_config_of, merged_params, model_variables, outer_params
from rlhf_jax.losses import chunked_token_logprobs, masked_mean, token_logprobs
from rlhf_jax.model import ModelConfig, Transformer, lm_logits
from rlhf_jax.rollout import head_of, logit_chunk_size
from rlhf_jax.train.algorithm import Algorithm, cached_algorithm
from rlhf_jax.train.batching import batch_indices, check_context, trim_padding
from rlhf_jax.train.fit import FitContext, fit
from rlhf_jax.train.optim import OptimConfig, guarded_update
from rlhf_jax.train.run import RunConfig
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.trainable import init_trainable


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
    logit_chunk: int | None = None
    """Positions per chunk of the LM head in the loss and the evaluation
    (:func:`rlhf_jax.losses.chunked_nll`: the float32 ``[B, T, V]`` logits never built); ``0``:
    whole logits; ``None`` (auto): chunks of 128 once a batch's logits would exceed 1 GiB
    (:func:`rlhf_jax.rollout.logit_chunk_size`). Rematerialisation of the blocks is the model's
    ``ModelConfig.remat``."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-3)
    """Optimizer."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    def __post_init__(self):
        at_least(self, "logit_chunk", 0, integer=True, optional=True)
        at_least(self, "batch_size", 1, integer=True)
        at_least(self, "max_length", 2, integer=True)
        at_least(self, "pad_multiple", 0, integer=True)
        in_range(self, "eval_fraction", 0, 1, high_open=True)
        at_least(self, "eval_every", 0, integer=True)


class SFTBatch(NamedTuple):
    """Tokenised SFT rows (host NumPy or device arrays): ``loss_mask`` marks the tokens that are
    predicted (the completion, its EOS). Packed rows also carry ``segment_ids`` and ``positions``
    (several examples per row, see :class:`rlhf_jax.model.Transformer`)."""

    input_ids: Int[Array, "B T"]
    attention_mask: Int[Array, "B T"]
    loss_mask: Int[Array, "B T"]
    segment_ids: Int[Array, "B T"] | None = None
    positions: Int[Array, "B T"] | None = None


class SFTResult(NamedTuple):
    params: dict
    """The new base: full weights, with the adapter merged in when LoRA was used."""
    lora: Any
    """The trained :class:`rlhf_jax.lora.Adapter` (before merging), or ``None``."""
    state: TrainState
    """The final training state."""
    history: list[dict]
    """Per-step metrics."""
    eval: dict
    """Final held-out ``eval_loss`` and ``eval_perplexity``."""
    skipped_examples: int
    """Examples that did not fit ``max_length`` (never silently dropped)."""
    stop_reason: str
    """Why the loop stopped."""


def encode_sft(tokenizer, prompts: Sequence[str], completions: Sequence[str], *, max_length: int,
               append_eos: bool = True) -> tuple[SFTBatch, Any]:
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
    return SFTBatch(batch.input_ids, batch.attention_mask, loss_mask), report


def lm_loss(logits, input_ids, loss_mask):
    """Mean next-token negative log-likelihood over the tokens where ``loss_mask`` is 1 (token mean)."""
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    mask = loss_mask[:, 1:]
    nll = -masked_mean(logp, mask)
    return nll, {"loss": nll, "tokens": jnp.sum(mask)}


def _hidden(model_config: ModelConfig, trainable, base, batch: SFTBatch, *, key=None):
    model = Transformer(model_config, lora=lora_config_of(trainable))
    kw = {} if key is None else {"deterministic": False, "rngs": {"dropout": key}}
    return model.apply(model_variables(base, trainable), batch.input_ids, attention_mask=batch.attention_mask,
                       segment_ids=batch.segment_ids, positions=batch.positions, return_hidden=True,
                       compute_logits=False, **kw).hidden


def next_token_logprobs(model_config: ModelConfig, trainable, base, batch: SFTBatch, *, chunk: int | None = None,
                        key=None):
    """float32 ``log p(x_{t+1} | x_{<=t})`` ``[B, T-1]`` of ``base`` + ``trainable``: from the whole
    logits, or over sequence chunks of the LM head (``chunk``, see
    :func:`rlhf_jax.rollout.logit_chunk_size`); ``key``: dropout."""
    hidden = _hidden(model_config, trainable, base, batch, key=key)[:, :-1]
    targets = batch.input_ids[:, 1:]
    c = logit_chunk_size(chunk, *targets.shape, model_config.vocab_size)
    if c:
        return chunked_token_logprobs(hidden, *head_of(model_config, trainable, base), targets, chunk_size=c)
    return token_logprobs(lm_logits(model_config, outer_params(base, trainable), hidden), targets)


def make_sft(model_config: ModelConfig, optimizer, config: SFTConfig) -> Algorithm:
    """SFT as an ``(init, step)`` pair.

    - ``init(key, base) -> TrainState``: ``params`` is a fresh adapter (``config.lora``) or a copy
      of ``base`` (full fine-tuning).
    - ``step(state, base, batch: SFTBatch) -> (state, metrics)``: one update of the token-mean
      NLL over ``loss_mask``; metrics ``loss``, ``tokens``, ``skipped`` (cumulative), ``updates``.
    """

    def init(key, base) -> TrainState:
        k_params, k_run = jax.random.split(key)
        params = init_trainable(model_config, base, config.lora, k_params)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), k_run, jnp.zeros((), jnp.int32))

    def loss_fn(trainable, base, batch, key):
        logp = next_token_logprobs(model_config, trainable, base, batch, chunk=config.logit_chunk, key=key)
        mask = batch.loss_mask[:, 1:]
        nll = -masked_mean(logp, mask)
        return nll, {"loss": nll, "tokens": jnp.sum(mask)}

    def step(state: TrainState, base, batch: SFTBatch):
        key = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, base, batch, key)
        params, opt_state, skipped = guarded_update(state.params, state.opt_state, grads, loss, optimizer)
        skipped = state.skipped + skipped
        return TrainState(state.step + 1, params, opt_state, state.rng, skipped), dict(metrics, skipped=skipped,
                                                                                        updates=1)

    return Algorithm(init, step)


def sft_eval_sums(model_config: ModelConfig, trainable, base, batch: SFTBatch, *, chunk: int | None = None):
    """``(sum of NLL over loss_mask, token count)`` of one batch, no dropout: the pieces of a
    held-out token-mean loss over many batches (``chunk``: as ``SFTConfig.logit_chunk``)."""
    logp = next_token_logprobs(model_config, trainable, base, batch, chunk=chunk)
    mask = batch.loss_mask[:, 1:]
    return jnp.sum(-logp * mask), jnp.sum(mask)


@functools.lru_cache(maxsize=16)
def _jitted_eval(model_config: ModelConfig, chunk: int | None = None):
    return jax.jit(functools.partial(sft_eval_sums, model_config, chunk=chunk))  # one compilation per config


def rows(data: SFTBatch, idx, pad_multiple: int = 0) -> SFTBatch:
    """The rows ``idx`` of host data, cut to their longest sequence (see :func:`trim_padding`)."""
    picked = SFTBatch(*(None if x is None else x[idx] for x in data))
    present = {k: v for k, v in picked._asdict().items() if v is not None}
    return SFTBatch(**trim_padding(present, multiple=pad_multiple))


def split_held_out(data: SFTBatch, fraction: float, seed: int) -> tuple[SFTBatch, SFTBatch]:
    """``(train, held-out)``: a seeded random ``fraction`` of the rows held out."""
    n = data.input_ids.shape[0]
    n_eval = int(round(n * fraction))
    order = np.random.default_rng(seed).permutation(n)
    pick = lambda idx: SFTBatch(*(None if x is None else x[idx] for x in data))
    return pick(order[n_eval:]), pick(order[:n_eval])


def train_sft(model_config: ModelConfig, params: dict, tokenizer, prompts: Sequence[str],
              completions: Sequence[str], config: SFTConfig) -> SFTResult:
    """Fine-tune ``params`` on ``prompt -> completion`` pairs (see :class:`SFTConfig`) with
    :func:`make_sft` run by :func:`rlhf_jax.train.fit`."""
    check_context(model_config, who="sft", max_length=config.max_length)
    data, report = encode_sft(tokenizer, prompts, completions, max_length=config.max_length,
                              append_eos=config.append_eos)
    train, held = split_held_out(data, config.eval_fraction, config.run.seed)
    n_train, n_eval = train.input_ids.shape[0], held.input_ids.shape[0]
    if n_train < config.batch_size:
        raise ValueError(f"SFT: {n_train} training examples (after {report.skipped} skipped and {n_eval} held out) "
                         f"are fewer than batch_size {config.batch_size}; lower batch_size or add data")
    algo = cached_algorithm(make_sft, model_config, config)
    state = algo.init(jax.random.PRNGKey(config.run.seed), params)
    eval_sums = _jitted_eval(model_config, config.logit_chunk)

    def batches(step: int, ctx: FitContext):
        idx = batch_indices(step, n_train, config.batch_size, config.run.seed)
        return rows(train, idx, config.pad_multiple), {}

    def evaluate(ctx: FitContext) -> dict:
        if n_eval == 0:
            return {}
        tot, cnt = 0.0, 0.0
        for i in range(0, n_eval, config.batch_size):
            s, c = eval_sums(ctx.state.params, ctx.base, rows(held, slice(i, i + config.batch_size), config.pad_multiple))
            tot, cnt = tot + float(s), cnt + float(c)
        loss = tot / max(cnt, 1.0)
        return {"eval_loss": loss, "eval_perplexity": float(np.exp(loss))}

    res = fit(algo.step, state, params, batches, run=config.run, name="sft", log_keys=("loss", "eval_loss"),
              evaluate=evaluate, eval_every=config.eval_every, record={"config": config, "data": data})
    final_eval = res.final_eval
    trained = res.state.params
    return SFTResult(merged_params(params, trained), trained if config.lora is not None else None, res.state,
                     res.history, final_eval, report.skipped, res.stop_reason)
