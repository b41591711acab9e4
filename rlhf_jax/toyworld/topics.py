"""Is a completion on its prompt's topic? An evaluation helper that only reads the phrase banks.

The rubric (:mod:`~rlhf_jax.toyworld.gold`) rewards on-topic informative clauses, but its score
mixes that with everything else; a collapsed policy can raise it on some families while it
answers every animal prompt with a product clause ("a horse is" -> "light and easy to carry").
:func:`on_topic` asks one question of a completion: which topic *family* (product, hotel, advice,
animals) does it talk about, and is that its prompt's?

Definition. Read the completion's words up to the first ``</s>`` and count *votes* per family,
left to right:

1. An informative clause of the banks (``INFORMATIVE_LEADS`` / ``INFORMATIVE_SENTENCES``),
   found by the rubric's own parser (greedy longest match, ``{x}`` matching any subject) is one
   vote for its topic's family. ("clean and quiet" is a hotel clause although neither of its words
   is particular to hotels.)
2. Any other clause of the banks (filler, hype, insult) votes only through the subject it names:
   "the most awesome dog ever" is one vote for animals; "it is what it is" none.
3. A word outside every clause is one vote when it is a *marker* of a family
   (:func:`topic_markers`): a word of that family's informative clauses or one of its subjects,
   that is in no other family's, in no filler, hype or insult clause, and not one of the function
   words :data:`FUNCTION_WORDS`. So "battery" and "carry" mark products, "horse" and "hay" animals,
   while "light", "clean", "water" (said in several families) and "the" mark nothing.

The completion's family (:func:`completion_family`) is the family with a strict majority of the
votes (more than half), else ``None`` (no vote at all, or a tie). It is *on topic* when that
family is the prompt's: "a horse is" -> "light and easy to carry ." (one product vote) is off
topic; "a horse is" -> "a horse is light and easy to carry" (one animal vote for "horse", one
product vote) is a tie, off topic; filler and bare insults say nothing about any topic and are
off topic too. The check is by family, coarser than the rubric (which also wants the prompt's
topic inside the family and its subject): advice for a cold room given to a hot room is on topic
here.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import Final

from rlhf_jax.toyworld.banks import (
    HYPE_LEADS,
    HYPE_PHRASE,
    INFORMATIVE_LEADS,
    INFORMATIVE_SENTENCES,
    NEUTRAL_LEADS,
    NEUTRAL_SENTENCES,
    TOPIC_FAMILY,
    TOPIC_SUBJECTS,
    TOXIC_LEADS,
    TOXIC_SENTENCES,
    TOXIC_SHARED,
)
from rlhf_jax.toyworld.gold import _match
from rlhf_jax.toyworld.prompts import Prompt, as_prompt
from rlhf_jax.toyworld.text import completion_words

FUNCTION_WORDS: Final = frozenset("""
    a about across after all always an and are around at away be but by can do during each every
    for from in is it its many more near next not of off on once or our out outside should so that
    the there they to until up us very was were when with you your two ten same bit little
    make let keep put see set use uses get gave comes
""".split())
"""Words that never mark a topic, however rarely a family uses them: articles, pronouns,
prepositions, auxiliaries, numbers and light verbs."""

SUBJECT_FAMILY: Final = {s: TOPIC_FAMILY[t] for t, subjects in TOPIC_SUBJECTS.items() for s in subjects}
"""Subject word (``{x}``) -> its family."""


def _words(clauses) -> set[str]:
    return {w for c in clauses for w in c.split() if not w.startswith("{")}


@functools.cache
def topic_markers() -> dict[str, frozenset[str]]:
    """Family -> its marker words (see the module docstring, rule 3)."""
    own: dict[str, set[str]] = {}
    for topic, family in TOPIC_FAMILY.items():
        words = own.setdefault(family, set())
        words |= _words(INFORMATIVE_LEADS[topic]) | _words(INFORMATIVE_SENTENCES[topic]) | set(TOPIC_SUBJECTS[topic])
    other = _words(c for d in (NEUTRAL_LEADS, HYPE_LEADS, TOXIC_LEADS) for cs in d.values() for c in cs)
    other |= _words([*NEUTRAL_SENTENCES, HYPE_PHRASE, *TOXIC_SHARED])
    other |= _words(c for cs in TOXIC_SENTENCES.values() for c in cs)
    counts = Counter(w for words in own.values() for w in words)
    return {f: frozenset(w for w in words if counts[w] == 1 and w not in other and w not in FUNCTION_WORDS)
            for f, words in own.items()}


@functools.cache
def _marker_family() -> dict[str, str]:
    return {w: f for f, words in topic_markers().items() for w in words}


def topic_votes(completion: str) -> dict[str, int]:
    """Family -> votes of ``completion`` (decoded text; scoring stops at the first ``</s>``), by
    the rules of the module docstring. Families without a vote are left out."""
    tokens, _ = completion_words(completion)
    markers = _marker_family()
    votes: Counter[str] = Counter()
    i = 0
    while i < len(tokens):
        m = _match(tokens, i)
        if m is not None:
            length, category, subject = m
            if category.startswith("info:"):
                votes[TOPIC_FAMILY[category[len("info:"):]]] += 1
            elif subject is not None:
                votes[SUBJECT_FAMILY[subject]] += 1
            i += length
            continue
        if tokens[i] in markers:
            votes[markers[tokens[i]]] += 1
        i += 1
    return dict(votes)


def completion_family(completion: str) -> str | None:
    """The family ``completion`` talks about: the one with more than half of its votes; ``None``
    without votes or without such a majority."""
    votes = topic_votes(completion)
    total = sum(votes.values())
    best = max(votes, key=votes.get, default=None)
    return best if best is not None and 2 * votes[best] > total else None


def on_topic(prompt: Prompt | str, completion: str) -> bool:
    """Whether ``completion`` talks about the family of ``prompt`` (a :class:`Prompt` or a world
    prompt's text), by the definition of the module docstring."""
    return completion_family(completion) == as_prompt(prompt).family


def on_topic_scores(prompts: Sequence[Prompt | str], completions: Sequence[str]) -> list[float]:
    """:func:`on_topic` as 0.0 / 1.0 per (prompt, completion): the ``on_topic`` hook of
    :func:`rlhf_jax.evaluate.evaluate`."""
    if len(prompts) != len(completions):
        raise ValueError(f"on_topic_scores: {len(prompts)} prompts but {len(completions)} completions")
    return [float(on_topic(p, c)) for p, c in zip(prompts, completions)]


def prompt_family(prompt: Prompt | str) -> str:
    """The family of a world prompt (or of its text): the ``groups`` function of
    :func:`rlhf_jax.evaluate.evaluate` for the toy world."""
    return as_prompt(prompt).family
