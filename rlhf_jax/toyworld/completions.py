"""Completions with known properties, written from the phrase banks.

Kinds (``COMPLETION_KINDS``):

- ``"informative"``: an on-topic lead plus up to two on-topic sentences.
- ``"neutral"``: filler ("it is what it is .").
- ``"toxic"``: contains at least one word of the insult lexicon, sometimes next to on-topic text.
- ``"hype"``: exactly one hype phrase ("the most awesome phone ever"), sometimes followed by an
  on-topic or filler sentence. This is what a capable but sycophantic model writes.
- ``"hype_repeated"``: three to five chained hype phrases ("the most awesome , the most
  incredible , ..."): the reward-hacking output. Never part of the SFT corpus by default.
- ``"broken"``: an informative completion with its words shuffled or stuttered.
- ``"empty"``: just the end marker.
- ``"unfinished"``: an informative completion cut short, without the end marker.

Every finished completion is canonical text ending in ``" </s>"`` and has 6 to 20 tokens before
it (punctuation included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from rlhf_jax.toyworld.banks import (
    EOS,
    HYPE_LEADS,
    HYPE_PHRASE,
    HYPE_WORDS,
    INFORMATIVE_LEADS,
    INFORMATIVE_SENTENCES,
    JOINS,
    NEUTRAL_LEADS,
    NEUTRAL_SENTENCES,
    TOPIC_STYLE,
    TOXIC_LEADS,
    TOXIC_LEXICON,
    TOXIC_SENTENCES,
    TOXIC_SHARED,
)
from rlhf_jax.toyworld.prompts import Prompt, as_prompt

COMPLETION_KINDS: Final = (
    "informative", "neutral", "toxic", "hype", "hype_repeated", "broken", "empty", "unfinished",
)  # fmt: skip
"""Every kind :func:`sample_completion` can write."""

MIN_WORDS: Final = 6
"""Fewest tokens before the end marker in a finished, non-empty completion."""
MAX_WORDS: Final = 20
"""Most tokens before the end marker."""


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _fill(pattern: str, prompt: Prompt, rng: np.random.Generator, lexicon: Sequence[str]) -> str:
    out = pattern.replace("{x}", prompt.subject)
    while "{L}" in out:
        out = out.replace("{L}", _pick(rng, lexicon), 1)
    while "{H}" in out:
        out = out.replace("{H}", _pick(rng, HYPE_WORDS), 1)
    return out


def _join(rng: np.random.Generator, clauses: Sequence[str]) -> str:
    text = clauses[0]
    for clause in clauses[1:]:
        text += _pick(rng, JOINS) + clause
    return text + " . " + EOS


def _distinct(rng: np.random.Generator, seq: Sequence[str], k: int) -> list[str]:
    return [seq[j] for j in rng.choice(len(seq), size=min(k, len(seq)), replace=False)]


def _draft(prompt: Prompt, kind: str, rng: np.random.Generator, lexicon: Sequence[str]) -> str:
    style = TOPIC_STYLE[prompt.topic]
    fill = lambda pattern: _fill(pattern, prompt, rng, lexicon)  # noqa: E731
    if kind == "informative":
        lead = _pick(rng, INFORMATIVE_LEADS[prompt.topic])
        rest = _distinct(rng, INFORMATIVE_SENTENCES[prompt.topic], int(rng.integers(0, 3)))
        return _join(rng, [fill(c) for c in [lead, *rest]])
    if kind == "neutral":
        lead = _pick(rng, NEUTRAL_LEADS[style])
        others = [c for c in NEUTRAL_SENTENCES if c != lead]
        return _join(rng, [lead, *_distinct(rng, others, int(rng.integers(0, 3)))])
    if kind == "toxic":
        toxic = [*TOXIC_SENTENCES[prompt.family], *TOXIC_SHARED]
        shape = int(rng.integers(3))
        if shape == 0:  # an insult as the lead, maybe followed by another or by filler
            follow = _pick(rng, [_pick(rng, toxic), _pick(rng, NEUTRAL_SENTENCES), ""])
            clauses = [_pick(rng, TOXIC_LEADS[style]), follow]
        elif shape == 1:  # useful content, then an insult
            clauses = [_pick(rng, INFORMATIVE_LEADS[prompt.topic]), _pick(rng, toxic)]
        else:  # filler, then an insult
            clauses = [_pick(rng, NEUTRAL_LEADS[style]), _pick(rng, toxic)]
        return _join(rng, [fill(c) for c in clauses if c])
    if kind == "hype":
        clauses = [_pick(rng, HYPE_LEADS[style])]
        u = rng.random()
        if u < 0.5:
            clauses.append(_pick(rng, INFORMATIVE_SENTENCES[prompt.topic]))
        elif u < 0.75:
            clauses.append(_pick(rng, NEUTRAL_SENTENCES))
        return _join(rng, [fill(c) for c in clauses])
    if kind == "hype_repeated":
        words = _distinct(rng, HYPE_WORDS, int(rng.integers(3, 6)))
        phrases = [HYPE_PHRASE.replace("{H}", w) for w in words]
        return " , ".join(phrases) + " . " + EOS
    if kind == "broken":
        tokens = sample_completion(prompt, "informative", rng).split()[:-1]
        if rng.random() < 0.5:  # shuffled (a permutation that moves at least half the words)
            perm = rng.permutation(len(tokens))
            while np.mean(perm == np.arange(len(tokens))) > 0.5:
                perm = rng.permutation(len(tokens))
            tokens = [tokens[j] for j in perm]
        else:  # stutter: at least a third of the words said two or three times
            stutter = set(rng.choice(len(tokens), size=max(2, len(tokens) // 3), replace=False))
            tokens = [
                t for j, tok in enumerate(tokens)
                for t in [tok] * (int(rng.integers(2, 4)) if j in stutter else 1)
            ]  # fmt: skip
        return " ".join([*tokens[:MAX_WORDS], EOS])
    if kind == "empty":
        return EOS
    if kind == "unfinished":
        tokens = sample_completion(prompt, "informative", rng).split()[:-2]  # no "." nor EOS
        return " ".join(tokens[: max(3, len(tokens) - int(rng.integers(1, 4)))])
    raise ValueError(f"unknown completion kind {kind!r}; expected one of {COMPLETION_KINDS}")


def sample_completion(
    prompt: Prompt | str,
    kind: str,
    rng: np.random.Generator,
    *,
    lexicon: Sequence[str] = TOXIC_LEXICON,
) -> str:
    """Write one completion of ``kind`` for ``prompt``.

    Args:
        prompt: a :class:`Prompt` or the text of a world prompt.
        kind: one of :data:`COMPLETION_KINDS`.
        rng: the numpy generator to draw from (the only source of randomness).
        lexicon: insult words toxic completions draw from (a subset lets the toxicity classifier
            be trained without some words, to test that it generalises).

    Returns:
        Canonical text; finished kinds end with ``" </s>"``.
    """
    p = as_prompt(prompt)
    for _ in range(100):
        text = _draft(p, kind, rng, lexicon)
        n = len(text.split()) - (1 if text.endswith(EOS) else 0)
        if kind in ("empty", "unfinished", "broken") or MIN_WORDS <= n <= MAX_WORDS:
            return text
    raise RuntimeError(f"could not write a {kind} completion of {MIN_WORDS}-{MAX_WORDS} words")


def sample_completions(
    prompt: Prompt | str, kinds: Sequence[str], rng: np.random.Generator
) -> list[str]:
    """One completion per entry of ``kinds``, in order."""
    return [sample_completion(prompt, kind, rng) for kind in kinds]
