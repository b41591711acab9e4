"""Synthetic negatives: corrupted copies of preferred completions, ranked below the originals.

Labelers rank what the SFT model writes, and an SFT model rarely writes broken text, so a reward
model trained on their pairs has seen little of it and may score it as well as a good answer. RL
then finds it: the policy drifts into scrambled or spliced text that the reward model never saw
ranked (in the toy-world demo, completions flagged as nonsense double during PPO while the reward
models score them above evasive answers). Pairs of (completion, corrupted copy) teach the one thing
any labeler would say about them, that the corrupted copy is worse, without asking anyone.

Corruptions work on whitespace-separated words, so any language and tokenizer:

- ``"shuffle"``: the words in a random order (at least two move);
- ``"splice"``: the first part of the completion, then the end of a preferred completion of
  another prompt (text that starts on topic and wanders off);
- ``"repeat"``: a random span of words said twice in a row (a stutter).

A completion that a corruption cannot change (one word; a splice when no other prompt has a
preferred completion) gives no pair and is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from rlhf_jax.config_checks import check, in_range

KINDS = ("shuffle", "splice", "repeat")
"""The corruptions :func:`corrupted_negatives` knows."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class NegativesConfig:
    """Which corrupted copies :func:`corrupted_negatives` makes."""

    kinds: tuple[str, ...] = KINDS
    """Corruptions to draw from, one per copy, uniformly (see the module docstring)."""
    fraction: float = 1.0
    """Share of the distinct preferred completions (per prompt) that get a corrupted copy."""
    end: str | None = None
    """A last word kept in place when it ends the completion (an end-of-text marker written in the
    text, as the toy world's ``</s>``); ``None``: every word can move."""
    seed: int = 0
    """Seed of the choice of completions, corruptions and their randomness."""

    def __post_init__(self):
        check(self, "kinds", bool(self.kinds) and all(k in KINDS for k in self.kinds),
              f"a non-empty tuple of {KINDS}")
        in_range(self, "fraction", 0, 1, low_open=True)


@dataclasses.dataclass(frozen=True)
class NegativesReport:
    """What :func:`corrupted_negatives` made."""

    completions: int
    """Distinct preferred completions (per prompt) in the pairs."""
    pairs: int
    """Pairs made (original chosen, corrupted rejected)."""
    by_kind: dict[str, int]
    """Pairs per corruption."""
    unchanged: int
    """Completions drawn but left as they were (one word, or a splice with no other prompt to take
    an ending from): no pair."""

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.by_kind.items())
        return (f"{self.pairs} corrupted-negative pairs from {self.completions} preferred completions ({kinds}; "
                f"{self.unchanged} left unchanged: one word, or no other prompt to splice with)")


def corrupt(text: str, kind: str, rng: np.random.Generator, *, other: str = "", end: str | None = None) -> str:
    """``text`` corrupted by ``kind`` (module docstring); ``other`` is the text a splice ends with.
    Returns ``text`` unchanged when it is too short to corrupt."""
    words = text.split()
    tail = [words.pop()] if end is not None and words and words[-1] == end else []
    if len(words) < 2:
        return text
    if kind == "shuffle":
        order = rng.permutation(len(words))
        while np.all(order == np.arange(len(words))):
            order = rng.permutation(len(words))
        words = [words[i] for i in order]
    elif kind == "splice":
        donor = [w for w in other.split() if w != end]
        if not donor:
            return text
        cut, start = int(rng.integers(1, len(words))), int(rng.integers(0, len(donor)))
        words = words[:cut] + donor[start:]
    elif kind == "repeat":
        i = int(rng.integers(0, len(words)))
        j = int(rng.integers(i + 1, min(len(words), i + 4) + 1))
        words = words[:j] + words[i:j] + words[j:]
    else:
        raise ValueError(f"corrupt: kind must be one of {KINDS}, got {kind!r}")
    return " ".join(words + tail)


def _content(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _like(completion: Any, text: str) -> Any:
    """``text`` in the form of ``completion`` (a string, or a message list whose last content it is)."""
    if isinstance(completion, str):
        return text
    return [*completion[:-1], {**completion[-1], "content": text}]


def corrupted_negatives(pairs: datasets.Dataset | Sequence[dict], config: NegativesConfig = NegativesConfig()
                        ) -> tuple[datasets.Dataset, NegativesReport]:
    """New pairs from ``pairs`` (the columns of :func:`rlhf_jax.feedback.feedback_to_pairs`, strings
    or TRL's conversational form), one per drawn preferred completion: the completion chosen, its
    corrupted copy rejected, ``agreement`` 1 and no ``margin``; the same columns and features as
    ``pairs``. Train on them with the labelers' pairs, e.g. as
    ``train_reward_model(..., train_only=negatives)`` (never held out, so the held-out accuracy
    stays the labelers').

    Each distinct (prompt, chosen completion) is drawn with probability ``config.fraction`` and
    corrupted by a kind drawn from ``config.kinds``; a splice ends with a preferred completion of
    another prompt. A copy identical to its original (module docstring) gives no pair and is counted.
    """
    base = pairs if isinstance(pairs, datasets.Dataset) else datasets.Dataset.from_list(list(pairs))
    seen: dict[tuple[str, str], dict] = {}
    for r in base:
        pid = r.get("prompt_id")
        seen.setdefault((str(pid if pid is not None else r["prompt"]), _content(r["chosen"])), r)
    keys = list(seen)
    of_prompt: dict[str, list[int]] = {}  # each prompt's positions in keys, ascending
    for i, key in enumerate(keys):
        of_prompt.setdefault(key[0], []).append(i)
    rng = np.random.default_rng([config.seed, 907])
    added: list[dict] = []
    by_kind = dict.fromkeys(config.kinds, 0)
    unchanged = 0
    for key in keys:
        if rng.random() >= config.fraction:
            continue
        kind = config.kinds[int(rng.integers(0, len(config.kinds)))]
        other = ""
        if len(keys) > len(of_prompt[key[0]]):  # a uniform draw among the other prompts' completions
            j = int(rng.integers(0, len(keys) - len(of_prompt[key[0]])))
            for pos in of_prompt[key[0]]:
                j += pos <= j
            other = keys[j][1]
        text = corrupt(key[1], kind, rng, other=other, end=config.end)
        if text == key[1]:
            unchanged += 1
            continue
        row = seen[key]
        by_kind[kind] += 1
        new = {**dict.fromkeys(base.column_names), **row, "rejected": _like(row["chosen"], text)}
        new.update({k: v for k, v in (("agreement", 1.0), ("margin", None)) if k in base.column_names})
        added.append(new)
    report = NegativesReport(completions=len(keys), pairs=len(added), by_kind=by_kind, unchanged=unchanged)
    if not added:
        return datasets.Dataset.from_dict({k: [] for k in base.column_names}, features=base.features), report
    return datasets.Dataset.from_list(added, features=base.features), report
