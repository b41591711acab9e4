"""Prompts: template x subject, in four families, with a deterministic sample and split."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rlhf_jax.toyworld.banks import FAMILIES, TOPIC_FAMILY, TOPIC_SUBJECTS, TOPIC_TEMPLATES
from rlhf_jax.toyworld.text import canonicalize


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """One prompt of the toy world."""

    prompt_id: str
    """Stable identifier, ``"{topic}-{template index}-{subject}"``, e.g. ``"product-0-phone"``."""
    family: str
    """``"product"``, ``"hotel"``, ``"advice"`` or ``"animals"``."""
    topic: str
    """Finer topic inside the family (e.g. ``"advice_hot"``); selects the informative bank."""
    subject: str
    """The slot word (``"phone"``); on-topic completions may mention it."""
    text: str
    """Canonical prompt text, e.g. ``"this phone is"``."""


@functools.cache
def all_prompts() -> tuple[Prompt, ...]:
    """Every distinct prompt of the world, in a fixed order (topic, template, subject)."""
    out = []
    for topic, family in TOPIC_FAMILY.items():
        for t, template in enumerate(TOPIC_TEMPLATES[topic]):
            for subject in TOPIC_SUBJECTS[topic]:
                out.append(
                    Prompt(
                        prompt_id=f"{topic}-{t}-{subject}",
                        family=family,
                        topic=topic,
                        subject=subject,
                        text=canonicalize(template.format(x=subject)),
                    )
                )
    return tuple(out)


@functools.cache
def _by_text() -> dict[str, Prompt]:
    return {p.text: p for p in all_prompts()}


@functools.cache
def _by_id() -> dict[str, Prompt]:
    return {p.prompt_id: p for p in all_prompts()}


def prompt_from_text(text: str) -> Prompt:
    """Look a prompt up by its text (any casing / spacing). Raises ``KeyError`` if unknown."""
    return _by_text()[canonicalize(text)]


def prompt_from_id(prompt_id: str) -> Prompt:
    """Look a prompt up by its ``prompt_id``. Raises ``KeyError`` if unknown."""
    return _by_id()[prompt_id]


def as_prompt(prompt: Prompt | str) -> Prompt:
    """``prompt`` itself, or the world prompt whose text it is."""
    return prompt if isinstance(prompt, Prompt) else prompt_from_text(prompt)


def make_prompts(n: int, *, seed: int) -> list[Prompt]:
    """Sample ``n`` distinct prompts, balanced over the families, in a seeded random order.

    The families get equal shares (as far as each family has prompts; a small family's shortfall
    goes to the others); inside a family prompts are drawn without replacement. Raises
    ``ValueError`` if ``n`` exceeds the number of distinct prompts (:func:`all_prompts`).
    """
    rng = np.random.default_rng([seed, 101])
    pool = all_prompts()
    members = {f: [p for p in pool if p.family == f] for f in FAMILIES}
    if not 0 <= n <= len(pool):
        raise ValueError(f"asked for {n} prompts, the world has {len(pool)}")
    counts = dict.fromkeys(FAMILIES, 0)
    while sum(counts.values()) < n:  # water-filling: one more for each family that has room
        for family in FAMILIES:
            if sum(counts.values()) < n and counts[family] < len(members[family]):
                counts[family] += 1
    chosen: list[Prompt] = []
    for family in FAMILIES:
        idx = rng.choice(len(members[family]), size=counts[family], replace=False)
        chosen.extend(members[family][j] for j in idx)
    order = rng.permutation(len(chosen))
    return [chosen[j] for j in order]


def split_prompts(
    prompts: Sequence[Prompt], *, held_out_fraction: float = 0.2, seed: int
) -> tuple[list[Prompt], list[Prompt]]:
    """Split prompts into (train, held_out), stratified by family, each keeping input order.

    Each family contributes ``round(held_out_fraction * count)`` prompts to the held-out part.
    """
    rng = np.random.default_rng([seed, 102])
    held: set[str] = set()
    for family in FAMILIES:
        ids = [p.prompt_id for p in prompts if p.family == family]
        k = int(round(held_out_fraction * len(ids)))
        held.update(ids[j] for j in rng.choice(len(ids), size=k, replace=False))
    train = [p for p in prompts if p.prompt_id not in held]
    held_out = [p for p in prompts if p.prompt_id in held]
    return train, held_out


def save_prompts(path: str | Path, prompts: Iterable[Prompt]) -> None:
    """Write prompts as JSONL, one ``{prompt_id, family, topic, subject, text}`` object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(asdict(p)) + "\n")


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read prompts written by :func:`save_prompts`."""
    with open(path, encoding="utf-8") as f:
        return [Prompt(**json.loads(line)) for line in f if line.strip()]
