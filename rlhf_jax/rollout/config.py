"""The sampling configuration: one frozen dataclass, a static argument of the jitted sampler."""

from __future__ import annotations

import dataclasses
import numbers

from rlhf_jax.config_checks import at_least, check, fail, in_range
from rlhf_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How :func:`rlhf_jax.rollout.generate` picks each new token.

    The rule is: ``greedy`` -> argmax of the logits; otherwise divide the logits by
    ``temperature``, keep the ``top_k`` largest (if set), then the top-``top_p`` nucleus (if
    ``< 1``), and sample from the softmax of what is left. The order (temperature, top-k,
    top-p) is that of Hugging Face ``generate``.
    """

    max_new_tokens: int
    """N, the most tokens generated per prompt (the response buffer is ``[B, N]``)."""
    temperature: float = 1.0
    """Divides the logits before softmax (> 0). Also used for the returned log-probs, in greedy
    mode too: ``log softmax(logits / temperature)``."""
    top_k: int | None = None
    """Keep only the ``top_k`` most likely tokens (ties at the boundary are kept); ``None``: off."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability (after
    temperature and top-k) reaches ``top_p``; ``1.0``: off."""
    greedy: bool = False
    """Pick the argmax (deterministic; the key is unused). Temperature, top-k and top-p do not
    change the choice."""
    eos_ids: tuple[int, ...] | None = None
    """Tokens that end a sequence; the EOS token itself is part of the response. ``None``: the
    model config's ``eos_ids``; ``()``: never stop early."""
    pad_id: int | None = None
    """Token written after a row has finished (and for the prompt's left padding). ``None``: the
    model config's ``pad_token_id``; an error if that is missing too."""

    def __post_init__(self):
        if isinstance(self.eos_ids, (list, int)):
            ids = (self.eos_ids,) if isinstance(self.eos_ids, int) else tuple(self.eos_ids)
            object.__setattr__(self, "eos_ids", ids)
        at_least(self, "max_new_tokens", 1, integer=True)
        if not (isinstance(self.temperature, numbers.Real) and not isinstance(self.temperature, bool)
                and self.temperature > 0):
            fail(self, "temperature", "a number > 0 (use greedy=True for argmax decoding)")
        at_least(self, "top_k", 1, integer=True, optional=True)
        in_range(self, "top_p", 0, 1, low_open=True)
        check(self, "greedy", isinstance(self.greedy, bool), "a boolean")
        check(self, "eos_ids", self.eos_ids is None or all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in self.eos_ids),
            "a tuple of token ids (integers >= 0) or None")
        at_least(self, "pad_id", 0, integer=True, optional=True)

    def resolve(self, model_config: ModelConfig) -> tuple[tuple[int, ...], int]:
        """``(eos_ids, pad_id)``, falling back to the model config; raises when no pad id is set."""
        eos = model_config.eos_ids if self.eos_ids is None else self.eos_ids
        pad = model_config.pad_token_id if self.pad_id is None else self.pad_id
        if pad is None:
            raise ValueError(
                "generation needs a padding token id: neither SamplingConfig.pad_id nor the model "
                "config's pad_token_id is set (a common choice is the EOS id: "
                "SamplingConfig(pad_id=eos_id, ...))")
        return tuple(int(e) for e in eos), int(pad)
