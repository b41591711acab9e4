"""DPO / IPO / cDPO as an ``(init, step)`` pair.

The reference model is the frozen base with the adapter off: no reference copy is held (with
LoRA). Policy and reference sequence log-probs come from one forward pass each over ``prompt +
chosen`` and ``prompt + rejected`` with the prompt computed once per pair
(:func:`rlhf_jax.rollout.grouped_response_logprobs`); the reference pass has no gradient, or is
replaced by log-probs cached once for the dataset (:func:`precompute_reference`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from rlhf_jax.losses import dpo_loss, ipo_loss, sequence_logprobs
from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout.forward import hidden_logprobs_entropy
from rlhf_jax.rollout.shared_prefix import grouped_response_hidden
from rlhf_jax.train.algorithm import Algorithm
from rlhf_jax.train.dpo.config import DPOBatch, DPOConfig
from rlhf_jax.train.grouped_batches import grouped_rows
from rlhf_jax.train.optim import guarded_update
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.trainable import init_trainable

PyTree = Any


def pair_logprobs(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None, batch: DPOBatch, *,
                  key: jax.Array | None = None, chunk: int | None = None, grad: bool = True) -> Float[Array, "B 2"]:
    """Sequence log-probs ``sum_t log pi(y_t | x, y_<t)`` of the chosen (``[:, 0]``) and rejected
    (``[:, 1]``) completions under ``base`` + ``trainable`` (``None``: the base alone, the
    reference), float32, the prompt computed once per pair; ``chunk``: the LM head over chunks of
    completion positions (see :func:`rlhf_jax.rollout.logit_chunk_size`); ``grad=False`` for a pass
    without gradient (the prompt's cache written in place)."""
    b, g, c = batch.completion_ids.shape
    ids, mask = batch.completion_ids.reshape(b * g, c), batch.completion_mask.reshape(b * g, c)
    hidden = grouped_response_hidden(model_config, trainable, base, batch.prompt_ids, batch.prompt_mask, ids, mask,
                                     group_size=g, key=key, scan_cache="layers" if grad else "carry")
    logps, _ = hidden_logprobs_entropy(model_config, trainable, base, hidden, ids, chunk=chunk)
    return sequence_logprobs(logps, mask).reshape(b, g)


def reference_logprobs(model_config: ModelConfig, base: PyTree, batch: DPOBatch, *,
                       chunk: int | None = None) -> Float[Array, "B 2"]:
    """The reference's sequence log-probs: the frozen base alone (no gradient)."""
    return jax.lax.stop_gradient(pair_logprobs(model_config, None, base, batch, chunk=chunk, grad=False))


def dpo_objective(config: DPOConfig, policy: Float[Array, "B 2"], reference: Float[Array, "B 2"],
                  lengths: Float[Array, "B 2"]) -> tuple[Float[Array, ""], dict]:
    """``(loss, metrics)`` from sequence log-probs (sums) and completion lengths.

    ``"sigmoid"``: :func:`rlhf_jax.losses.dpo_loss` (``label_smoothing`` = cDPO) on the sums.
    ``"ipo"``: :func:`rlhf_jax.losses.ipo_loss` on per-token averages (sums / max(length, 1)), as
    TRL 1.12 does. Metrics (TRL's): ``rewards_chosen`` / ``rewards_rejected`` = mean ``beta * (log
    pi - log pi_ref)`` of the sums, ``accuracy`` = share of pairs whose chosen reward is the
    higher, ``margin`` = mean reward difference; ``logps_chosen`` / ``logps_rejected`` (policy);
    ``logratio`` = mean over completion tokens of ``log pi - log pi_ref`` on the data's
    completions (0 while the policy equals the reference, e.g. at step 0, to float rounding; the k1 KL
    estimator's form, but the completions are not the policy's samples, so it can be negative:
    DPO pushes the rejected completions' log-probs down)."""
    if config.loss == "ipo":
        n = jnp.maximum(lengths, 1.0)
        loss, _ = ipo_loss(policy[:, 0] / n[:, 0], policy[:, 1] / n[:, 1], reference[:, 0] / n[:, 0],
                           reference[:, 1] / n[:, 1], beta=config.beta)
    else:
        loss, _ = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta=config.beta,
                           label_smoothing=config.label_smoothing)
    ratio = policy - reference
    rewards = config.beta * ratio
    metrics = {"rewards_chosen": jnp.mean(rewards[:, 0]), "rewards_rejected": jnp.mean(rewards[:, 1]),
               "accuracy": jnp.mean((rewards[:, 0] > rewards[:, 1]).astype(jnp.float32)),
               "margin": jnp.mean(rewards[:, 0] - rewards[:, 1]),
               "logps_chosen": jnp.mean(policy[:, 0]), "logps_rejected": jnp.mean(policy[:, 1]),
               "logratio": jnp.sum(ratio) / jnp.maximum(jnp.sum(lengths), 1.0)}
    return loss, jax.lax.stop_gradient(metrics)


def dpo_batch_loss(model_config: ModelConfig, config: DPOConfig, trainable: PyTree, base: PyTree, batch: DPOBatch,
                   *, key: jax.Array | None = None) -> tuple[Float[Array, ""], dict]:
    """``(loss, metrics)`` of one batch: the policy ``base`` + ``trainable`` against the
    reference (``batch.ref_logps`` when cached, else the base alone, computed here)."""
    policy = pair_logprobs(model_config, trainable, base, batch, key=key, chunk=config.logit_chunk)
    reference = (reference_logprobs(model_config, base, batch, chunk=config.logit_chunk) if batch.ref_logps is None
                 else batch.ref_logps)
    lengths = jnp.sum(batch.completion_mask, axis=-1).astype(jnp.float32)
    return dpo_objective(config, policy, jnp.asarray(reference, jnp.float32), lengths)


def make_dpo(model_config: ModelConfig, optimizer, config: DPOConfig) -> Algorithm:
    """DPO / IPO / cDPO as an ``(init, step)`` pair.

    - ``init(key, base) -> TrainState``: ``params`` is a fresh policy adapter (``config.lora``;
      ``B = 0``, so the policy starts equal to the reference) or a copy of ``base`` (full
      fine-tuning).
    - ``step(state, base, batch: DPOBatch) -> (state, metrics)``: one update; metrics ``loss``,
      ``rewards_chosen``, ``rewards_rejected``, ``accuracy``, ``margin``, ``logps_chosen``,
      ``logps_rejected``, ``logratio`` (see :func:`dpo_objective`), ``skipped`` (cumulative), ``updates``.
      ``base`` is the reference; with cached reference log-probs and full fine-tuning it may be
      ``None``.
    """
    dropout = config.lora is not None and config.lora.dropout > 0

    def init(key, base) -> TrainState:
        k_params, k_run = jax.random.split(key)
        params = init_trainable(model_config, base, config.lora, k_params)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), k_run, jnp.zeros((), jnp.int32))

    def loss_fn(trainable, base, batch, key):
        return dpo_batch_loss(model_config, config, trainable, base, batch, key=key)

    def step(state: TrainState, base, batch: DPOBatch):
        key = jax.random.fold_in(state.rng, state.step) if dropout else None
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, base, batch, key)
        params, opt_state, skipped = guarded_update(state.params, state.opt_state, grads, loss, optimizer)
        skipped = state.skipped + skipped
        return (TrainState(state.step + 1, params, opt_state, state.rng, skipped),
                dict(metrics, loss=loss, skipped=skipped, updates=1))

    return Algorithm(init, step)


def dpo_rows(arrays: dict, idx, pad_multiple: int) -> DPOBatch:
    """The pairs ``idx`` of host DPO arrays as a :class:`DPOBatch`, prompts and completions each
    cut to their longest row (rounded up to ``pad_multiple``)."""
    return DPOBatch(**grouped_rows(arrays, idx, pad_multiple, mask_key="completion_mask"))


def precompute_reference(model_config: ModelConfig, base: PyTree, arrays: dict, *, batch_size: int,
                         pad_multiple: int = 8) -> np.ndarray:
    """Reference sequence log-probs ``[N, 2]`` (float32) of every pair of host DPO arrays, in
    chunks of ``batch_size`` pairs (each padded to ``batch_size`` rows: one compilation per
    width). Store them as ``arrays["ref_logps"]`` for ``DPOConfig(reference="cached")``."""
    f = jax.jit(lambda b, batch: reference_logprobs(model_config, b, batch))
    n = arrays["prompt_ids"].shape[0]
    out = []
    for i in range(0, n, batch_size):
        idx = np.minimum(np.arange(i, i + batch_size), n - 1)
        out.append(np.asarray(f(base, dpo_rows(arrays, idx, pad_multiple)))[:min(batch_size, n - i)])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)
