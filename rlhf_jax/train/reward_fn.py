"""The reward interface the PPO trainer accepts.

- :class:`ModelReward`: a reward model scored inside the jitted PPO step. With ``base=None`` it
  shares the policy's frozen base (only its adapter and head are held); with a ``base`` of its
  own it is another checkpoint (a second base is then held, by choice).
- :class:`TextReward`: any Python callable on texts ``(prompts, completions) -> scores``, for
  classifiers and rule-based rewards; run on the host between generation and the update.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from rlhf_jax.model import ModelConfig
from rlhf_jax.train.reward import RewardModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelReward:
    """A reward model evaluated in-graph: ``scores(base, tokens, mask) -> [B]``."""

    model_config: ModelConfig
    """Config of the reward model's base (the policy's, when shared)."""
    reward_model: RewardModel
    """Adapter (or full weights), head and normalisation."""
    base: dict | None = None
    """``None``: share the policy's base. Else the reward model's own base parameters."""

    in_graph = True

    def arrays(self):
        """The arrays the jitted step takes as an argument (never closed over)."""
        return {"rm": self.reward_model.params, "base": self.base}

    def score(self, arrays, policy_base, tokens, attention_mask):
        base = policy_base if arrays["base"] is None else arrays["base"]
        rm = self.reward_model._replace(params=arrays["rm"])
        return rm.scores(self.model_config, base, tokens, attention_mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextReward:
    """A Python reward on decoded texts: ``fn(prompts, completions) -> [B] floats``."""

    fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]
    """The scorer; completions are decoded without special tokens."""

    in_graph = False

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        scores = np.asarray(self.fn(list(prompts), list(completions)), np.float32)
        if scores.shape != (len(completions),):
            raise ValueError(f"reward function returned shape {scores.shape}, expected ({len(completions)},)")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"reward function returned non-finite scores at rows "
                             f"{np.nonzero(~np.isfinite(scores))[0].tolist()}")
        return scores
