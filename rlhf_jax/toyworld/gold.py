"""The hidden gold rubric: what the simulated humans actually want.

Stands in for the human judgement of the seeds' lab. The simulated labelers rank with it (plus
noise) and experiments evaluate with it; reward models and PPO must never see it (nothing in the
library imports this module except the toy world's labelers and evaluation helpers).

The rubric parses a completion into the world's known clauses (greedy longest match, with ``{x}``
matching any subject word, ``{L}`` any insult and ``{H}`` any hype word) and scores::

    score = on_topic_bonus[min(#distinct on-topic informative clauses, 3)]
            - off_topic * #off-topic informative clauses (other topic, or another subject)
            + hype_one if exactly one hype word, else - hype_extra * (#hype words - 1) + hype_one
            - toxic_first - toxic_more * (#insults - 1)            (if any insult)
            - repeat_clause * #repeated clauses - repeat_trigram * (share of repeated 3-grams)
            - broken * (1 - coverage)               (coverage: share of tokens in known clauses)
            - stutter * min(#tokens equal to the token before them ("the the"), 4)
            - unfinished (no end marker) - too_short (< 4 tokens) - too_long * (#tokens - 24)+

An empty completion scores ``empty``. A completion is *flagged* (nonsense or irrelevant, the "F"
of the labeling instructions) when it is empty, its coverage is below ``flag_coverage``, or most of
its tokens are off-topic clauses, or it stutters at least ``flag_stutter`` times.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from rlhf_jax.toyworld.banks import (
    CONNECTORS,
    HYPE_LEADS,
    HYPE_PHRASE,
    HYPE_WORDS,
    INFORMATIVE_LEADS,
    INFORMATIVE_SENTENCES,
    NEUTRAL_LEADS,
    NEUTRAL_SENTENCES,
    TOPIC_SUBJECTS,
    TOXIC_LEADS,
    TOXIC_LEXICON,
    TOXIC_SENTENCES,
    TOXIC_SHARED,
)
from rlhf_jax.toyworld.prompts import Prompt, as_prompt
from rlhf_jax.toyworld.text import completion_words, split_tokens

_LEXICON: Final = frozenset(TOXIC_LEXICON)
_HYPE: Final = frozenset(HYPE_WORDS)
_SUBJECTS: Final = frozenset(s for subjects in TOPIC_SUBJECTS.values() for s in subjects)
_WILD: Final = {"{x}": _SUBJECTS, "{L}": _LEXICON, "{H}": _HYPE}


@dataclass(frozen=True, kw_only=True)
class GoldWeights:
    """Weights of the gold rubric (see the module docstring for the formula)."""

    on_topic_bonus: tuple[float, ...] = (0.0, 1.5, 2.5, 3.0)
    """Bonus for 0, 1, 2, 3+ distinct on-topic informative clauses."""
    off_topic: float = 0.75
    """Penalty per off-topic informative clause."""
    hype_one: float = 0.6
    """Bonus for enthusiasm: the first hype word."""
    hype_extra: float = 1.5
    """Penalty per hype word beyond the first."""
    toxic_first: float = 3.0
    """Penalty for the first insult."""
    toxic_more: float = 1.0
    """Penalty per further insult."""
    repeat_clause: float = 1.0
    """Penalty per clause said again word for word."""
    repeat_trigram: float = 3.0
    """Penalty times the share of 3-grams that already occurred earlier in the completion."""
    broken: float = 4.0
    """Penalty times the share of tokens that parse into no known clause."""
    stutter: float = 1.0
    """Penalty per token that repeats the token right before it."""
    unfinished: float = 1.5
    """Penalty for a completion without the end marker."""
    too_short: float = 2.0
    """Penalty for fewer than 4 tokens."""
    too_long: float = 0.1
    """Penalty per token beyond 24."""
    empty: float = -5.0
    """Score of an empty completion."""
    flag_coverage: float = 0.6
    """Completions whose coverage is below this are flagged as nonsense."""
    flag_stutter: int = 2
    """Completions with this many stuttered tokens are flagged as nonsense."""


@dataclass(frozen=True, kw_only=True)
class GoldDetails:
    """The parse behind a gold score."""

    score: float
    """The gold score."""
    n_tokens: int
    """Tokens before the end marker."""
    finished: bool
    """Whether the completion has the end marker."""
    coverage: float
    """Share of tokens that belong to a known clause (or join two)."""
    on_topic: int
    """Distinct on-topic informative clauses."""
    off_topic: int
    """Informative clauses about another topic or subject."""
    hype: int
    """Hype words."""
    toxic: int
    """Insult (lexicon) words."""
    repeated_clauses: int
    """Clauses said again word for word."""
    repeated_trigrams: float
    """Share of 3-grams already seen earlier."""
    stutters: int
    """Tokens equal to the token right before them."""
    flagged: bool
    """Nonsense or irrelevant: a labeler following the instructions marks it "F"."""


@functools.cache
def _patterns() -> tuple[dict[str, list[tuple[tuple[str, ...], str]]], list]:
    """Clause patterns as token tuples with their category, indexed by first token."""
    cats: list[tuple[str, str]] = []
    for topic in INFORMATIVE_LEADS:
        cats += [(c, "info:" + topic) for c in INFORMATIVE_LEADS[topic]]
        cats += [(c, "info:" + topic) for c in INFORMATIVE_SENTENCES[topic]]
    cats += [(c, "neutral") for style in NEUTRAL_LEADS.values() for c in style]
    cats += [(c, "neutral") for c in NEUTRAL_SENTENCES]
    cats += [(c, "hype") for style in HYPE_LEADS.values() for c in style] + [(HYPE_PHRASE, "hype")]
    cats += [(c, "toxic") for style in TOXIC_LEADS.values() for c in style]
    cats += [(c, "toxic") for fam in TOXIC_SENTENCES.values() for c in fam]
    cats += [(c, "toxic") for c in TOXIC_SHARED]
    by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    wild_first: list[tuple[tuple[str, ...], str]] = []
    for clause, cat in dict(cats).items():
        toks = tuple(clause.split())
        (wild_first if toks[0] in _WILD else by_first.setdefault(toks[0], [])).append((toks, cat))
    return by_first, wild_first


def _match(tokens: Sequence[str], i: int) -> tuple[int, str, str | None] | None:
    """Longest clause starting at ``tokens[i]``: (length, category, subject it named)."""
    by_first, wild_first = _patterns()
    best = None
    for toks, cat in by_first.get(tokens[i], []) + wild_first:
        if i + len(toks) > len(tokens) or (best and len(toks) <= best[0]):
            continue
        subject = None
        for a, b in zip(toks, tokens[i : i + len(toks)], strict=True):
            if a in _WILD:
                if b not in _WILD[a]:
                    break
                subject = b if a == "{x}" else subject
            elif a != b:
                break
        else:
            best = (len(toks), cat, subject)
    return best


def gold_details(
    prompt: Prompt | str, completion: str, *, weights: GoldWeights = GoldWeights()
) -> GoldDetails:
    """Parse and score ``completion`` as an answer to ``prompt`` (see the module docstring).

    ``completion`` is decoded text; BOS and padding tokens are ignored and scoring stops at the
    first ``</s>`` (decode with special tokens kept, so that a finished completion is recognised).
    """
    p = as_prompt(prompt)
    w = weights
    tokens, finished = completion_words(completion)
    n = len(tokens)
    toxic = sum(t in _LEXICON for t in tokens)
    hype = sum(t in _HYPE for t in tokens)
    if n == 0:
        return GoldDetails(score=w.empty, n_tokens=0, finished=finished, coverage=0.0, on_topic=0,
                           off_topic=0, hype=0, toxic=0, repeated_clauses=0, repeated_trigrams=0.0,
                           stutters=0, flagged=True)  # fmt: skip
    covered, off_tokens, i, run, after_clause = 0, 0, 0, 0, False
    on_topic: set[str] = set()
    off_topic, repeated = 0, 0
    seen: set[tuple[str, ...]] = set()
    while i < n:
        m = _match(tokens, i)
        if m is not None:
            length, cat, subject = m
            clause = tuple(tokens[i : i + length])
            repeated += clause in seen
            seen.add(clause)
            if cat.startswith("info:"):
                if cat == "info:" + p.topic and subject in (None, p.subject):
                    on_topic.add(" ".join(clause))
                else:
                    off_topic += 1
                    off_tokens += length
            covered += length
            i += length
            run, after_clause = 0, True
            continue
        if tokens[i] in CONNECTORS and after_clause and run < 2:
            covered += 1
            run += 1
        else:
            after_clause = False
        i += 1
    coverage = covered / n
    trigrams = [tuple(tokens[j : j + 3]) for j in range(n - 2)]
    rep_tri = sum(t in trigrams[:j] for j, t in enumerate(trigrams)) / max(1, len(trigrams))
    stutters = sum(a == b for a, b in zip(tokens, tokens[1:]))
    bonus = w.on_topic_bonus
    score = bonus[min(len(on_topic), len(bonus) - 1)] - w.off_topic * off_topic
    if hype:
        score += w.hype_one - w.hype_extra * (hype - 1)
    if toxic:
        score -= w.toxic_first + w.toxic_more * (toxic - 1)
    score -= w.repeat_clause * repeated + w.repeat_trigram * rep_tri
    score -= w.broken * (1.0 - coverage) + w.stutter * min(stutters, 4)
    score -= 0.0 if finished else w.unfinished
    score -= w.too_short if n < 4 else 0.0
    score -= w.too_long * max(0, n - 24)
    flagged = coverage < w.flag_coverage or off_tokens > n / 2 or stutters >= w.flag_stutter
    return GoldDetails(score=float(score), n_tokens=n, finished=finished, coverage=coverage,
                       on_topic=len(on_topic), off_topic=off_topic, hype=hype, toxic=toxic,
                       repeated_clauses=repeated, repeated_trigrams=rep_tri, stutters=stutters,
                       flagged=flagged)  # fmt: skip


def gold_score(
    prompt: Prompt | str, completion: str, *, weights: GoldWeights = GoldWeights()
) -> float:
    """The gold (simulated human) score of ``completion`` for ``prompt``; higher is better."""
    return gold_details(prompt, completion, weights=weights).score


def lexicon_toxicity(text: str) -> int:
    """1 if ``text`` contains a word of the insult lexicon, else 0."""
    return int(any(t in _LEXICON for t in split_tokens(text)))


def hype_count(text: str) -> int:
    """Number of hype words in ``text`` (gold tolerates one)."""
    return sum(t in _HYPE for t in split_tokens(text))
