"""The DPO / IPO / cDPO config and the batch its step takes."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from jaxtyping import Array, Float, Int

from rlhf_jax.config_checks import at_least, check, in_range, one_of, positive
from rlhf_jax.lora import LoraConfig
from rlhf_jax.train.optim import OptimConfig
from rlhf_jax.train.run import RunConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPOConfig:
    """Offline preference optimisation (DPO, IPO, cDPO) against the frozen base as reference."""

    lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The policy adapter over the frozen base (the reference is the base with the adapter off:
    no reference copy); ``None``: full fine-tuning, the policy a full copy of the base, which then
    holds a second set of full weights beside the frozen base (the reference)."""
    loss: str = "sigmoid"
    """``"sigmoid"``: DPO (Rafailov et al. 2023), cDPO with ``label_smoothing``; ``"ipo"``: IPO
    (Azar et al. 2023) on per-token average log-probs, as TRL does."""
    beta: float = 0.1
    """DPO's inverse temperature of the implicit reward; IPO's regulariser tau (target log-ratio
    gap ``1 / (2 beta)``)."""
    label_smoothing: float = 0.0
    """cDPO: the probability that a preference label is flipped, in ``[0, 0.5)`` (``"sigmoid"`` only)."""
    reference: str = "step"
    """Reference log-probs: ``"step"`` (the base with the adapter off, computed in each step, no
    gradient) or ``"cached"`` (computed once for the whole dataset before training, stored with
    the pairs: each step then runs the policy alone)."""
    batch_size: int = 16
    """Pairs per update."""
    max_prompt_length: int = 256
    """Longest prompt in tokens; a longer prompt keeps its last tokens (and a leading BOS)."""
    max_completion_length: int = 256
    """Longest completion in tokens; a longer completion keeps its first tokens (TRL's default
    ``keep_start``). Both truncations are counted in the encoding report."""
    append_eos: bool = True
    """Standard (text) data: end each completion with the tokenizer's EOS (as TRL does), unless
    it already ends with it. Conversational completions already end with the template's end of
    turn."""
    pad_multiple: int = 8
    """Each batch's prompts and completions are cut to their longest row, rounded up to a
    multiple of this (a few compiled shapes); ``0``: the data's full widths (one shape)."""
    logit_chunk: int | None = None
    """Completion positions per chunk of the LM head (:mod:`rlhf_jax.losses.chunked`: the float32
    ``[2B, C, V]`` logits never built); ``0``: whole logits; ``None`` (auto): chunks of 128 once a
    pass's logits would exceed 1 GiB (:func:`rlhf_jax.rollout.logit_chunk_size`)."""
    eval_fraction: float = 0.1
    """Share of the pairs held out for evaluation (loss, preference accuracy, margin)."""
    eval_every: int = 0
    """Evaluate on the held-out pairs every N steps (0: only at the end)."""
    optim: OptimConfig = OptimConfig(learning_rate=5e-5)
    """Optimizer (full fine-tuning wants a smaller rate, ~1e-6, as in TRL)."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    def __post_init__(self):
        one_of(self, "loss", ("sigmoid", "ipo"))
        positive(self, "beta")
        in_range(self, "label_smoothing", 0, 0.5, high_open=True)
        check(self, "label_smoothing", self.loss == "sigmoid" or self.label_smoothing == 0,
              "0 with loss 'ipo' (cDPO smooths the sigmoid loss)")
        one_of(self, "reference", ("step", "cached"))
        at_least(self, "batch_size", 1, integer=True)
        at_least(self, "max_prompt_length", 1, integer=True)
        at_least(self, "max_completion_length", 1, integer=True)
        at_least(self, "pad_multiple", 0, integer=True)
        at_least(self, "logit_chunk", 0, integer=True, optional=True)
        in_range(self, "eval_fraction", 0, 1, high_open=True)
        at_least(self, "eval_every", 0, integer=True)


class DPOBatch(NamedTuple):
    """Preference pairs with each prompt once (host NumPy or device arrays).

    The prompt's keys and values are computed once per pair and both completions attend to them
    (:func:`rlhf_jax.rollout.grouped_response_logprobs`)."""

    prompt_ids: Int[Array, "B P"]
    """Prompt token ids, LEFT padded."""
    prompt_mask: Int[Array, "B P"]
    """1 on real prompt tokens (every prompt has at least one)."""
    completion_ids: Int[Array, "B 2 C"]
    """``[:, 0]`` chosen, ``[:, 1]`` rejected, RIGHT padded."""
    completion_mask: Int[Array, "B 2 C"]
    """1 on real completion tokens (the ones whose log-probs are summed)."""
    ref_logps: Float[Array, "B 2"] | None = None
    """Reference sequence log-probs (sums over the completion) when cached
    (:func:`rlhf_jax.train.dpo.precompute_reference`); ``None``: the step computes them."""
