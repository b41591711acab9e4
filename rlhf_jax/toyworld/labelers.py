"""Simulated labelers: rank completions by the gold rubric plus noise, flag nonsense.

Each prompt goes to ``n_labelers_per_prompt`` labelers drawn from a pool. A labeler:

1. flags ("F") every completion the gold rubric calls nonsense or irrelevant (but misses one with
   probability ``flag_miss_prob``, ranking it instead) and gives it rank ``null``;
2. ranks the others by ``gold score + noise`` (Gaussian or Gumbel, scale per labeler), 1 = best,
   competition style with ties (``1, 2, 2, 4``);
3. ties two neighbours of its order only when their gold scores are nearly equal (within
   ``tie_gold_gap``), and then only with probability ``tie_prob``: ties are allowed but rare.

The last labeler of the pool partly misreads the instructions: with probability ``misread_prob``
per prompt it ranks by length (``misreader="length"``, the default: longer is better) or by gold
plus a large bonus per hype word (``misreader="hype"``). The length misreader stands out clearly
in agreement tables; the hype misreader only on prompts that have a hype completion.

The labelers only see what they are given. In the demo that is samples of the SFT model, which
almost never repeats hype, so the reward model never learns that *repeated* hype is bad while the
gold rubric punishes it: the setting of the seeds' reward-hacking example.

Records have the ranked-feedback shape validated by ``rlhf_jax.feedback``::

    {"prompt_id": str, "prompt": str, "completions": [str, ...],
     "criterion": "helpful and harmless", "instructions_id": "toyworld-v1",
     "labels": [{"labeler": str, "ranking": [int | null, ...], "flagged": [int, ...]}, ...]}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from rlhf_jax.toyworld.gold import GoldDetails, gold_details
from rlhf_jax.toyworld.prompts import Prompt, as_prompt

CRITERION: Final = "helpful and harmless"
"""The ranking criterion written into every record."""
INSTRUCTIONS_ID: Final = "toyworld-v1"
"""Id of the instructions the simulated labelers follow."""

Misreader = Literal["hype", "length"] | None


@dataclass(frozen=True, kw_only=True)
class LabelerConfig:
    """The labeler pool and its habits."""

    noise_scales: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.45)
    """Noise scale of each labeler of the pool (its length is the pool size); gold gaps between
    completion kinds are about 1.5 to 3."""
    noise: Literal["gaussian", "gumbel"] = "gaussian"
    """Noise distribution added to gold scores."""
    tie_gold_gap: float = 0.05
    """Neighbours whose gold scores differ by less than this may be tied."""
    tie_prob: float = 0.1
    """Probability that such neighbours are tied."""
    flag_miss_prob: float = 0.05
    """Probability that a labeler ranks a completion it should have flagged."""
    misread_prob: float = 0.5
    """Probability, per prompt, that the misreading labeler (the last of the pool) misreads."""
    hype_bonus: float = 3.0
    """Bonus per hype word when the misreader prefers hype."""

    def labeler_ids(self) -> list[str]:
        """Ids of the pool: ``labeler-0`` ... ; the last one is the misreader."""
        return [f"labeler-{k}" for k in range(len(self.noise_scales))]


def _ranks(scores: np.ndarray, gold: np.ndarray, rng: np.random.Generator, cfg: LabelerConfig):
    """Competition ranks (1 = best) of ``scores``, tying near-equal-gold neighbours sometimes."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.zeros(len(scores), dtype=int)
    for pos, idx in enumerate(order):
        prev = order[pos - 1] if pos else None
        tie = (prev is not None and abs(gold[idx] - gold[prev]) < cfg.tie_gold_gap
               and rng.random() < cfg.tie_prob)  # fmt: skip
        ranks[idx] = ranks[prev] if tie else pos + 1
    return ranks


def _label(
    details: Sequence[GoldDetails],
    scale: float,
    misread: Misreader,
    rng: np.random.Generator,
    cfg: LabelerConfig,
) -> tuple[list[int | None], list[int]]:
    n = len(details)
    flagged = [i for i, d in enumerate(details) if d.flagged and rng.random() >= cfg.flag_miss_prob]
    keep = [i for i in range(n) if i not in flagged]
    gold = np.array([details[i].score for i in keep])
    if misread == "length":
        base = np.array([float(details[i].n_tokens) for i in keep])
    elif misread == "hype":
        base = gold + cfg.hype_bonus * np.array([details[i].hype for i in keep])
    else:
        base = gold
    if cfg.noise == "gumbel":
        noise = rng.gumbel(size=len(keep)) * scale
    else:
        noise = rng.normal(size=len(keep)) * scale
    ranking: list[int | None] = [None] * n
    if keep:
        for i, r in zip(keep, _ranks(base + noise, gold, rng, cfg), strict=True):
            ranking[i] = int(r)
    return ranking, flagged


def label_prompts(
    prompt_ids: Sequence[str],
    prompts: Sequence[Prompt | str],
    completions_per_prompt: Sequence[Sequence[str]],
    *,
    n_labelers_per_prompt: int = 3,
    seed: int,
    misreader: Misreader = "length",
    config: LabelerConfig = LabelerConfig(),
) -> list[dict[str, Any]]:
    """Rank the completions of each prompt by several simulated labelers.

    Args:
        prompt_ids: one id per prompt (written into the record as is).
        prompts: world prompts, as :class:`Prompt` or their text.
        completions_per_prompt: the completions shown for each prompt (decoded text; a finished
            one ends with ``</s>``, see :func:`rlhf_jax.toyworld.gold.gold_details`).
        n_labelers_per_prompt: labelers per prompt, drawn without replacement from the pool.
        seed: seed; record ``i`` depends only on ``seed``, ``i`` and its own inputs.
        misreader: how the last labeler of the pool misreads (``"hype"``, ``"length"``), or
            ``None`` for a pool of careful labelers.
        config: the labeler pool.

    Returns:
        One ranked-feedback record per prompt (see the module docstring).
    """
    if not len(prompt_ids) == len(prompts) == len(completions_per_prompt):
        raise ValueError("prompt_ids, prompts and completions_per_prompt differ in length")
    ids = config.labeler_ids()
    if not 1 <= n_labelers_per_prompt <= len(ids):
        raise ValueError(f"n_labelers_per_prompt must be in 1..{len(ids)}")
    records = []
    for i, (pid, prompt, comps) in enumerate(
        zip(prompt_ids, prompts, completions_per_prompt, strict=True)
    ):
        rng = np.random.default_rng([seed, 301, i])
        p = as_prompt(prompt)
        details = [gold_details(p, c) for c in comps]
        chosen = np.sort(rng.choice(len(ids), size=n_labelers_per_prompt, replace=False))
        labels = []
        for k in chosen:
            misreads = k == len(ids) - 1 and misreader is not None
            misread = misreader if misreads and rng.random() < config.misread_prob else None
            ranking, flagged = _label(details, config.noise_scales[k], misread, rng, config)
            labels.append({"labeler": ids[k], "ranking": ranking, "flagged": flagged})
        records.append({
            "prompt_id": str(pid),
            "prompt": p.text,
            "completions": [str(c) for c in comps],
            "criterion": CRITERION,
            "instructions_id": INSTRUCTIONS_ID,
            "labels": labels,
        })  # fmt: skip
    return records


def agreement_with_gold(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per labeler, the share of ranked pairs ordered as the gold rubric orders them.

    Counts pairs of completions that the labeler ranked (both non-null) and whose gold scores
    differ by at least 0.25; a tie counts as half agreement.
    """
    agree: dict[str, float] = {}
    total: dict[str, int] = {}
    for rec in records:
        p = as_prompt(rec["prompt"])
        gold = [gold_details(p, c).score for c in rec["completions"]]
        for label in rec["labels"]:
            r = label["ranking"]
            for a in range(len(r)):
                for b in range(a + 1, len(r)):
                    if r[a] is None or r[b] is None or abs(gold[a] - gold[b]) < 0.25:
                        continue
                    lab = np.sign(r[b] - r[a])  # +1: labeler prefers a
                    ref = np.sign(gold[a] - gold[b])
                    name = label["labeler"]
                    agree[name] = agree.get(name, 0.0) + (0.5 if lab == 0 else float(lab == ref))
                    total[name] = total.get(name, 0) + 1
    return {name: agree[name] / total[name] for name in sorted(total)}
