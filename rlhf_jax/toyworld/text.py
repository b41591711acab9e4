"""Canonical text form shared by the generators, the tokenizer, the rubric and the classifier.

Canonical text is lowercase with exactly one space between tokens, and every punctuation mark is a
token of its own: ``"This phone is GREAT, really!"`` -> ``"this phone is great , really !"``.
Everything the toy world writes is already canonical, so the word-level tokenizer round-trips it.
"""

from __future__ import annotations

import re

from rlhf_jax.toyworld.banks import BOS, EOS, PAD

_TOKEN_RE = re.compile(r"</?s>|<pad>|<unk>|[a-z0-9]+|[^\sa-z0-9]")


def split_tokens(text: str) -> list[str]:
    """Lowercase ``text`` and split it into word, punctuation and special tokens."""
    return _TOKEN_RE.findall(text.lower())


def canonicalize(text: str) -> str:
    """Return the canonical form of ``text`` (see the module docstring)."""
    return " ".join(split_tokens(text))


def completion_words(completion: str) -> tuple[list[str], bool]:
    """Split a completion into its words up to the first EOS.

    BOS and padding tokens are dropped (``<unk>`` is kept, as a word no rubric knows), and so is
    anything after the first EOS (a decoder may keep sampling after it).

    Returns:
        ``(words, finished)``: the tokens before the first ``</s>``, and whether there was one.
    """
    words: list[str] = []
    for tok in split_tokens(completion):
        if tok == EOS:
            return words, True
        if tok in (PAD, BOS):
            continue
        words.append(tok)
    return words, False
