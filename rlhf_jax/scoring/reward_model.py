"""A reward model as one pytree: a model (adapter over the shared base, a full tree, or the base
itself), a scalar score head on the last real token, and the normalisation ``gain``/``bias``.

    score = gain * (h_last . w + b) + bias

Everything here is a pure function of explicit arrays (jit it, or call it inside a jitted step);
the reward model is an argument, never closed over. The critic of PPO starts from it through
:func:`critic_from_reward`, the one place that folds the head and the normalisation together.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from rlhf_jax.lora import Adapter, lora_config_of, merged_params, model_variables
from rlhf_jax.model import ModelConfig, Transformer, score_head

PyTree = Any


class RewardModel(NamedTuple):
    """A trained reward model (a pytree: pass it to jitted functions as an argument)."""

    model: Adapter | PyTree | None
    """An :class:`rlhf_jax.lora.Adapter` over the shared frozen base, a full parameter tree of
    its own (full fine-tuning, or another checkpoint), or ``None``: the shared base as it is
    (a head on a frozen base, e.g. a Hugging Face sequence classifier whose body is the policy's
    base)."""
    head: dict
    """The score head ``{"kernel": [D], "bias": []}`` read at the last real token."""
    gain: float | Float[Array, ""] = 1.0
    """Normalisation gain (1 / std of the SFT samples' raw scores)."""
    bias: float | Float[Array, ""] = 0.0
    """Normalisation bias (-mean / std)."""


def hidden_states(model_config: ModelConfig, trainable: PyTree | None, base: PyTree | None,
                  tokens: Int[Array, "B T"], attention_mask: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    """Final hidden states of ``base`` + ``trainable`` (see :func:`rlhf_jax.lora.model_variables`)."""
    model = Transformer(model_config, lora=lora_config_of(trainable))
    return model.apply(model_variables(base, trainable), tokens, attention_mask=attention_mask,
                       return_hidden=True, compute_logits=False).hidden


def raw_scores(model_config: ModelConfig, rm: RewardModel, base: PyTree | None, tokens: Int[Array, "B T"],
               attention_mask: Int[Array, "B T"]) -> Float[Array, "B"]:
    """Un-normalised scores ``h_last . w + b`` ``[B]`` (float32), read at each row's last real
    token (left or right padding). ``base`` is the shared base (unused when ``rm.model`` is a
    full tree of its own)."""
    hidden = hidden_states(model_config, rm.model, base, tokens, attention_mask)
    return score_head(rm.head, hidden, attention_mask)


def reward_scores(model_config: ModelConfig, rm: RewardModel, base: PyTree | None, tokens: Int[Array, "B T"],
                  attention_mask: Int[Array, "B T"]) -> Float[Array, "B"]:
    """Normalised scores ``gain * raw + bias`` ``[B]``: what RL optimises."""
    return rm.gain * raw_scores(model_config, rm, base, tokens, attention_mask) + rm.bias


def normalize_reward_model(rm: RewardModel, raw: np.ndarray) -> RewardModel:
    """Gain and bias so that ``raw`` (the raw scores of the SFT model's own samples) has mean 0
    and standard deviation 1 after normalisation (Ziegler et al. 2019)."""
    raw = np.asarray(raw, np.float64)
    if raw.size < 2:
        raise ValueError("normalize_reward_model needs at least 2 scores")
    mean, std = float(raw.mean()), float(raw.std())
    std = std if std > 1e-8 else 1.0
    return rm._replace(gain=1.0 / std, bias=-mean / std)


def normalize_on_samples(model_config: ModelConfig, rm: RewardModel, base: PyTree | None, tokenizer,
                         prompts: list[str], completions: list[str], *, max_length: int,
                         batch_size: int = 64) -> tuple[RewardModel, np.ndarray]:
    """The one normalisation recipe: score ``prompt + completion`` (samples of the SFT model, one
    row each) in fixed-size chunks and return the reward model normalised to mean 0 / std 1 on
    them, with the raw scores. Rows that do not fit ``max_length`` keep their last tokens."""
    from rlhf_jax.feedback.batches import BatchConfig, encode_sequences

    if len(prompts) != len(completions) or len(prompts) < 2:
        raise ValueError(f"normalize_on_samples needs >= 2 (prompt, completion) rows, got {len(prompts)} prompts "
                         f"and {len(completions)} completions")
    batch, _ = encode_sequences(tokenizer, prompts, completions, config=BatchConfig(max_length=max_length))
    score = jax.jit(lambda r, b, ids, m: raw_scores(model_config, r, b, ids, m))
    n = len(batch.input_ids)
    raw = []
    for i in range(0, n, batch_size):  # every chunk padded to batch_size rows: one compilation
        idx = np.minimum(np.arange(i, i + batch_size), n - 1)
        out = np.asarray(score(rm, base, batch.input_ids[idx], batch.attention_mask[idx]))
        raw.append(out[:min(batch_size, n - i)])
    raw = np.concatenate(raw)
    return normalize_reward_model(rm, raw), raw


def fold_head(rm: RewardModel) -> dict:
    """The score head with the normalisation folded in: ``h . (gain w) + (gain b + bias)``."""
    return {"kernel": jnp.asarray(rm.head["kernel"]) * rm.gain,
            "bias": jnp.asarray(rm.head["bias"]) * rm.gain + rm.bias}


def critic_from_reward(rm: RewardModel, base: PyTree | None = None, *, full: bool = False) -> dict:
    """PPO's critic initialised from the reward model (common practice: the values start as the
    normalised scores): ``{"model": ..., "head": folded head}`` with fresh buffers.

    ``full=False``: the critic's model is a copy of the reward model's (an adapter stays an
    adapter over the shared base). ``full=True``: a full parameter tree, the reward adapter
    merged into a copy of ``base`` (or a copy of the reward model's own full tree)."""
    model = rm.model
    if full:
        if model is None or isinstance(model, Adapter):
            if base is None:
                raise ValueError("critic_from_reward(full=True) needs the base the reward adapter sits on")
            model = merged_params(base, model)
    return copy_tree({"model": model, "head": fold_head(rm)})


def copy_tree(tree: PyTree) -> PyTree:
    """Fresh buffers for every array of ``tree`` (a trainer donates its state: the caller keeps
    its own arrays)."""
    return jax.tree_util.tree_map(jnp.array, tree)
