"""The reward protocol of every RL algorithm: a scorer turns a batch of completions into scores.

    scores = scorer(completions, base)        # np.ndarray [B] float32

An algorithm's step never sees a scorer: it takes ``scores [B]`` in its batch (or a user composes
:func:`rlhf_jax.scoring.reward_scores` into their own jitted step). The RL drivers call a scorer
between generation and the update. Kinds, freely combined:

- :class:`ModelScorer`: a :class:`RewardModel` scored on the prompt + completion tokens (jitted
  once; over the policy's shared base when the reward model is an adapter);
- :class:`FunctionScorer`: any Python ``fn(prompts, completions) -> floats`` (classifiers, rules,
  verifiers), on completions decoded without special tokens;
- :class:`WeightedScorer`: a weighted sum of scorers, each part logged under its name;
- :class:`ClippedScorer`: another scorer's scores clipped (an upper bound: satisficing).

Scores are returned as computed (non-finite values included): the drivers' non-finite policy
decides what happens to them, so that a bad reward is counted and reported, never hidden.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from rlhf_jax.model import ModelConfig
from rlhf_jax.scoring.reward_model import RewardModel, reward_scores

PyTree = Any
TextFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]
"""``(prompts, completions) -> one float per completion``."""


class Completions(NamedTuple):
    """What a scorer sees of a batch of completions (row ``b`` of every field belongs together)."""

    prompts: Sequence[Any]
    """The prompts as the user gave them (texts, or conversations as message lists)."""
    texts: Sequence[str]
    """The completions decoded without special tokens."""
    tokens: Any
    """``[B, P + N]`` prompt (left padded) + completion token ids, as generated."""
    attention_mask: Any
    """``[B, P + N]``: 1 for real tokens."""


class Scorer:
    """Base class: ``scorer(completions, base) -> [B]`` and ``scorer.parts(...) -> {name: [B]}``."""

    name: str = "score"

    def __call__(self, completions: Completions, base: PyTree | None) -> np.ndarray:
        raise NotImplementedError

    def parts(self, completions: Completions, base: PyTree | None) -> dict[str, np.ndarray]:
        """The named components of the score (one entry for a plain scorer)."""
        return {self.name: self(completions, base)}

    def score_and_parts(self, completions: Completions, base: PyTree | None) -> tuple[np.ndarray, dict]:
        """``(scores, components)``: the components are empty for a plain scorer (the score is
        the one component), one entry per part for a :class:`WeightedScorer`."""
        return self(completions, base), {}


def _as_scores(values, n: int, who: str) -> np.ndarray:
    try:
        x = np.asarray(values, np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{who} returned something that is not a list of numbers: {e}") from None
    if x.shape != (n,):
        raise ValueError(f"{who} returned shape {x.shape} for {n} completions (one float per completion expected)")
    return x


class ModelScorer(Scorer):
    """A reward model scored in-graph on the generated tokens: ``gain * (h_last . w + b) + bias``.

    With an adapter (or ``model=None``) the reward model sits on the base passed at call time (the
    policy's shared base: no second copy); with a full tree of its own, ``base`` is not used."""

    def __init__(self, model_config: ModelConfig, reward_model: RewardModel, *, name: str = "reward"):
        self.model_config, self.reward_model, self.name = model_config, reward_model, name
        self._score = jax.jit(lambda rm, base, tokens, mask: reward_scores(model_config, rm, base, tokens, mask))

    def __call__(self, completions: Completions, base: PyTree | None) -> np.ndarray:
        out = self._score(self.reward_model, base, completions.tokens, completions.attention_mask)
        return _as_scores(out, len(completions.texts), f"reward model {self.name!r}")


class FunctionScorer(Scorer):
    """A Python reward on texts: ``fn(prompts, completions) -> one float per completion``."""

    def __init__(self, fn: TextFn, *, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "score").strip("<>") or "score"

    def __call__(self, completions: Completions, base: PyTree | None = None) -> np.ndarray:
        out = self.fn(list(completions.prompts), list(completions.texts))
        return _as_scores(out, len(completions.texts), f"reward function {self.name!r}")


class WeightedScorer(Scorer):
    """``score = sum_i w_i * scorer_i``; :meth:`parts` returns each (unweighted) component."""

    def __init__(self, parts: Sequence[tuple[Scorer, float]], *, name: str = "score"):
        if not parts:
            raise ValueError("WeightedScorer needs at least one (scorer, weight)")
        names = [s.name for s, _ in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"WeightedScorer: scorer names must be unique (they name the logged parts), got {names}")
        self.items, self.name = [(as_scorer(s), float(w)) for s, w in parts], name

    def parts(self, completions: Completions, base: PyTree | None) -> dict[str, np.ndarray]:
        return {s.name: s(completions, base) for s, _ in self.items}

    def __call__(self, completions: Completions, base: PyTree | None) -> np.ndarray:
        return self.score_and_parts(completions, base)[0]

    def score_and_parts(self, completions: Completions, base: PyTree | None) -> tuple[np.ndarray, dict]:
        parts = self.parts(completions, base)
        return sum(w * parts[s.name] for s, w in self.items).astype(np.float32), parts


class ClippedScorer(Scorer):
    """A scorer's scores clipped to ``[low, high]`` (either bound optional).

    An upper bound makes the RL objective *satisfice*: every completion scoring at or above
    ``high`` earns the same reward, so the KL-penalised optimum (the reference reweighted by
    ``exp(reward / beta)``) keeps all good answers in their reference proportions instead of piling
    onto the few the reward model ranks highest, while bad answers are still pushed down in full.
    :meth:`score_and_parts` returns the inner scorer's parts plus ``unclipped`` (the score before
    clipping) and ``clipped`` (1.0 where a bound applied)."""

    def __init__(self, scorer: Scorer, *, low: float | None = None, high: float | None = None,
                 name: str | None = None):
        if low is None and high is None:
            raise ValueError("ClippedScorer: give low, high or both")
        for key, v in (("low", low), ("high", high)):
            if v is not None and not np.isfinite(v):
                raise ValueError(f"ClippedScorer: {key} must be finite, got {v}")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"ClippedScorer: low must be below high, got low={low}, high={high}")
        self.inner, self.low, self.high = as_scorer(scorer), low, high
        self.name = name or self.inner.name
        self.reward_model = getattr(self.inner, "reward_model", None)

    def score_and_parts(self, completions: Completions, base: PyTree | None) -> tuple[np.ndarray, dict]:
        raw, parts = self.inner.score_and_parts(completions, base)
        raw = np.asarray(raw, np.float32)
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        score = np.clip(raw, low, high)  # NaN stays NaN: the drivers' non-finite policy must still see it
        hit = (raw < low) | (raw > high)
        return score.astype(np.float32), {**parts, "unclipped": raw, "clipped": hit.astype(np.float32)}

    def parts(self, completions: Completions, base: PyTree | None) -> dict[str, np.ndarray]:
        return self.score_and_parts(completions, base)[1]

    def __call__(self, completions: Completions, base: PyTree | None) -> np.ndarray:
        return self.score_and_parts(completions, base)[0]


def as_scorer(reward: Scorer | TextFn, model_config: ModelConfig | None = None) -> Scorer:
    """A :class:`Scorer` from a scorer, a :class:`RewardModel` (needs ``model_config``) or a
    Python ``fn(prompts, completions)``."""
    if isinstance(reward, Scorer):
        return reward
    if isinstance(reward, RewardModel):
        if model_config is None:
            raise ValueError("as_scorer: a RewardModel needs the model_config of the base it runs on")
        return ModelScorer(model_config, reward)
    if callable(reward):
        return FunctionScorer(reward)
    raise TypeError(f"a reward must be a Scorer, a RewardModel or a function (prompts, completions) -> scores, "
                    f"got {type(reward).__name__}")
