"""Supervised fine-tuning: the causal-LM loss on the tokens a dataset marks (the completion of
prompt-completion rows, every assistant turn of a conversation, every token of a plain text), a
LoRA adapter or full fine-tuning, padded or packed rows; :func:`train_sft` ends by handing back the
base for RLHF (the adapter merged in)."""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.config_checks import at_least, check, in_range, one_of
from rlhf_jax.data import (DataConfig, EncodeReport, PackReport, SFTBatch, SFTDataConfig, pack_examples, pad_left,
                           padding_id, tokenize_sft)
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
    """Supervised fine-tuning on any SFT dataset (language modeling or prompt-completion, standard
    or conversational: see :mod:`rlhf_jax.data`)."""

    lora: LoraConfig | None = None
    """Train a LoRA adapter (merged into the base at the end); ``None``: full fine-tuning."""
    batch_size: int = 16
    """Sequences per update."""
    max_length: int = 64
    """Tokens per row; a longer prompt is cut from the left, a longer text or conversation keeps its
    start, a completion that does not fit alone is skipped (all counted in the report)."""
    append_eos: bool = True
    """Append the tokenizer's EOS to standard texts and completions that do not end with it
    (conversations end with the template's end-of-turn token instead)."""
    packing: bool = False
    """Pack several examples into each row of ``max_length`` tokens (``segment_ids``: no attention
    across examples, positions restart in each); ``batch_size`` then counts packed rows. The
    token-mean loss equals the unpacked one on the same examples."""
    packing_strategy: str = "best_fit"
    """``"best_fit"``: longest example first into the fullest row that fits (fewest rows);
    ``"sequential"``: in data order."""
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
        check(self, "packing", isinstance(self.packing, bool), "a boolean")
        one_of(self, "packing_strategy", ("best_fit", "sequential"))
        at_least(self, "pad_multiple", 0, integer=True)
        in_range(self, "eval_fraction", 0, 1, high_open=True)
        at_least(self, "eval_every", 0, integer=True)

    def data_config(self) -> SFTDataConfig:
        """How the examples are tokenised and laid out (:class:`rlhf_jax.data.SFTDataConfig`)."""
        return SFTDataConfig(max_length=self.max_length, append_eos=self.append_eos, packing=self.packing,
                             packing_strategy=self.packing_strategy)


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
    """Examples left out (too long, or no loss token left), never silently: see ``report``."""
    stop_reason: str
    """Why the loop stopped."""
    report: EncodeReport | None = None
    """What the data encoder read, kept, truncated and skipped (and how it packed)."""


def encode_sft(tokenizer, prompts: Sequence[str], completions: Sequence[str], *, max_length: int,
               append_eos: bool = True) -> tuple[SFTBatch, Any]:
    """Tokenise ``prompt + completion (+ eos)``, left padded; the loss mask covers the completion
    (and the EOS). Returns the data and the :class:`rlhf_jax.feedback.BatchReport` of what was
    truncated or skipped. (Lists of strings only; :func:`train_sft` takes any SFT dataset through
    :func:`rlhf_jax.data.tokenize_sft`, which gives the same rows for such data.)"""
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
    train, held = _held_out_order(n, fraction, seed)
    pick = lambda idx: SFTBatch(*(None if x is None else x[idx] for x in data))
    return pick(train), pick(held)


def _held_out_order(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * fraction))
    return order[n_eval:], order[:n_eval]


def layout_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], config: SFTConfig, pad_id: int
                    ) -> tuple[SFTBatch, PackReport | None]:
    """Host rows of tokenised ``(input_ids, loss_mask)`` examples: left padded to ``max_length``, or
    packed into rows of ``max_length`` (``segment_ids``, ``positions``, right padding) with
    ``config.packing``, and then the :class:`rlhf_jax.data.PackReport`."""
    if not config.packing:
        return pad_left(examples, pad_id=pad_id, length=config.max_length), None
    if not examples:
        empty = np.zeros((0, config.max_length), np.int32)
        return SFTBatch(empty, empty, empty, empty, empty), None
    packed, report = pack_examples(examples, length=config.max_length, pad_id=pad_id,
                                   strategy=config.packing_strategy)
    return SFTBatch(packed.input_ids, (packed.segment_ids > 0).astype(np.int32), packed.loss_mask,
                    packed.segment_ids, packed.positions), report


def train_sft(model_config: ModelConfig, params: dict, tokenizer, data: Any, config: SFTConfig, *,
              data_config: DataConfig = DataConfig()) -> SFTResult:
    """Fine-tune ``params`` on an SFT dataset (see :class:`SFTConfig`) with :func:`make_sft` run by
    :func:`rlhf_jax.train.fit`.

    Args:
      data: language-modeling (``text`` / ``messages``) or prompt-completion rows, standard or
        conversational: a path (JSONL, JSON, Parquet, a ``save_to_disk`` folder), a
        ``datasets.Dataset``/``DatasetDict`` or a list of dicts (see :mod:`rlhf_jax.data`).
        Conversations go through the chat template with the loss on the assistant turns only.
      data_config: ``format`` (force one), ``split``, ``chat_template`` (a ``.jinja`` file).

    The held-out share is drawn from the examples (before packing), so the evaluation loss is the
    same token mean whether the rows are packed or not.
    """
    check_context(model_config, who="sft", max_length=config.max_length)
    examples, report = tokenize_sft(data, tokenizer, config=config.data_config(), data_config=data_config)
    train_idx, held_idx = _held_out_order(len(examples), config.eval_fraction, config.run.seed)
    pad = padding_id(tokenizer)
    train, packing = layout_examples([examples[i] for i in train_idx], config, pad)
    held, _ = layout_examples([examples[i] for i in held_idx], config, pad)
    if packing is not None:  # the training rows' packing, numbered as dataset rows
        kept = report.kept_indices
        report = dataclasses.replace(report, packing=dataclasses.replace(
            packing, rows_of=tuple(tuple(kept[train_idx[j]] for j in r) for r in packing.rows_of)))
    n_train, n_eval = train.input_ids.shape[0], held.input_ids.shape[0]
    if n_train < config.batch_size:
        what = f"packed rows (of {len(train_idx)} examples)" if config.packing else "training examples"
        raise ValueError(f"SFT: {n_train} {what} (after {report.n_skipped} skipped and {len(held_idx)} held out) "
                         f"are fewer than batch_size {config.batch_size}; lower batch_size or add data")
    if report.n_skipped or report.truncated:
        print(f"sft: {report.summary()}", file=sys.stderr)
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
            part = rows(held, slice(i, i + config.batch_size), config.pad_multiple)
            s, c = eval_sums(ctx.state.params, ctx.base, part)
            tot, cnt = tot + float(s), cnt + float(c)
        loss = tot / max(cnt, 1.0)
        return {"eval_loss": loss, "eval_perplexity": float(np.exp(loss))}

    recorded = {name: {k: v for k, v in part._asdict().items() if v is not None}
                for name, part in (("train", train), ("held_out", held))}
    res = fit(algo.step, state, params, batches, run=config.run, name="sft", log_keys=("loss", "eval_loss"),
              evaluate=evaluate, eval_every=config.eval_every,
              record={"config": config, "data": recorded})
    trained = res.state.params
    return SFTResult(merged_params(params, trained), trained if config.lora is not None else None, res.state,
                     res.history, res.final_eval, report.n_skipped, res.stop_reason, report)
