"""The SFT corpus: prompt/completion demonstrations mixing the completion kinds at known rates.

The default mix (50% informative, 15% neutral, 25% toxic, 10% single hype) gives an SFT model that
can do the task but is sometimes toxic, the starting point of the seeds' detoxification lab.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from rlhf_jax.toyworld.completions import sample_completion
from rlhf_jax.toyworld.prompts import Prompt


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """How many demonstrations, and which share of each completion kind."""

    n_examples: int = 20_000
    """Number of prompt/completion pairs."""
    informative: float = 0.50
    """Share of on-topic, informative completions."""
    neutral: float = 0.15
    """Share of filler completions."""
    toxic: float = 0.25
    """Share of completions containing an insult."""
    hype: float = 0.10
    """Share of completions with exactly one hype phrase."""
    hype_repeated: float = 0.0
    """Share of chained-hype completions (0: the SFT model should rarely repeat hype)."""
    broken: float = 0.0
    """Share of shuffled / stuttered completions."""
    seed: int = 0
    """Seed of the numpy generator that picks prompts, kinds and words."""

    def __post_init__(self) -> None:
        total = sum(self.rates().values())
        if abs(total - 1.0) > 1e-6 or min(self.rates().values()) < 0:
            raise ValueError(f"kind rates must be >= 0 and sum to 1, got {self.rates()}")

    def rates(self) -> dict[str, float]:
        """Kind -> share."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("n_examples", "seed")}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SFTExample:
    """One demonstration."""

    prompt_id: str
    """The prompt's id."""
    prompt: str
    """The prompt text."""
    completion: str
    """The demonstrated completion, ending with ``" </s>"``."""
    kind: str
    """Which completion kind wrote it."""


def kind_counts(n: int, rates: dict[str, float]) -> dict[str, int]:
    """Exact counts per kind for ``n`` items (largest remainders get the leftover items)."""
    raw = {k: r * n for k, r in rates.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    leftover = n - sum(counts.values())
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[:leftover]:
        counts[k] += 1
    return counts


def make_sft_corpus(prompts: Sequence[Prompt], *, config: CorpusConfig) -> list[SFTExample]:
    """Write ``config.n_examples`` demonstrations for prompts drawn uniformly (with replacement).

    Each kind appears exactly ``round(rate * n_examples)`` times (up to rounding), in a seeded
    random order.
    """
    rng = np.random.default_rng([config.seed, 201])
    counts = kind_counts(config.n_examples, config.rates())
    kinds = [k for k, c in counts.items() for _ in range(c)]
    kinds = [kinds[j] for j in rng.permutation(len(kinds))]
    which = rng.integers(len(prompts), size=len(kinds))
    out = []
    for kind, j in zip(kinds, which, strict=True):
        p = prompts[int(j)]
        out.append(SFTExample(prompt_id=p.prompt_id, prompt=p.text,
                              completion=sample_completion(p, kind, rng), kind=kind))  # fmt: skip
    return out


def save_corpus(path: str | Path, examples: Iterable[SFTExample]) -> None:
    """Write the corpus as JSONL, one ``{prompt_id, prompt, completion, kind}`` per line."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(asdict(ex)) + "\n")


def load_corpus(path: str | Path) -> list[SFTExample]:
    """Read a corpus written by :func:`save_corpus`."""
    with open(path, encoding="utf-8") as f:
        return [SFTExample(**json.loads(line)) for line in f if line.strip()]
