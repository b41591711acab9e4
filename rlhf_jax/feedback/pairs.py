"""Rankings and thumbs up/down to preference pairs (preferred completion first).

A prompt with n completions gives n-choose-2 pairs. A pair whose two completions tie in the
consensus, or that involves a completion flagged by the consensus, is dropped and counted, so that
``pairs + tied_pairs + flagged_pairs == n(n-1)/2`` for every prompt. With ``flagged="last"`` a
flagged completion is instead ranked below every unflagged completion of its prompt (a flag says
"worse than anything ranked", as in the consensus): each (unflagged, flagged) pair is kept with the
flagged one rejected, and only pairs of two flagged completions are dropped. The reward model then
learns that nonsense and off-topic answers are bad, which it cannot from pairs that leave them out.

The output is a `datasets.Dataset` with columns ``prompt_id, prompt, chosen, rejected,
agreement, margin`` (see `rlhf_jax.feedback.storage.PAIR_FEATURES`). When the prompts are message
lists the pairs are in TRL's conversational preference format: ``prompt`` is the message list and
``chosen`` / ``rejected`` are ``[{"role": "assistant", "content": completion}]``
(`rlhf_jax.feedback.storage.features_for`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Sequence

import datasets

from rlhf_jax.feedback.consensus import ConsensusConfig, ConsensusResult, build_consensus
from rlhf_jax.feedback.records import BinaryFeedback, Message, PairRecord, Prompt, RankedFeedback
from rlhf_jax.feedback.storage import records_to_dataset


@dataclass(frozen=True, kw_only=True)
class RankingPairs:
    """Pairs of one ranking, as completion indices."""

    pairs: tuple[tuple[int, int], ...]
    """``(chosen, rejected)`` index pairs, chosen ranked strictly better."""

    tied_pairs: int
    """Pairs dropped because both completions have the same rank."""

    flagged_pairs: int
    """Pairs dropped because at least one completion is flagged (rank None); with
    ``flagged="last"``, because both are."""

    flagged_last_pairs: int = 0
    """Pairs kept with a flagged completion rejected (``flagged="last"``); the last of ``pairs``."""


FLAGGED = ("drop", "last")
"""What pairs do with a flagged completion: ``"drop"`` the pairs, or rank it ``"last"``."""


def _check_flagged(flagged: str) -> None:
    if flagged not in FLAGGED:
        raise ValueError(f"flagged must be one of {FLAGGED}, got {flagged!r}")


def ranking_to_pairs(ranks: Sequence[int | float | None], *, flagged: str = "drop") -> RankingPairs:
    """All n-choose-2 pairs of a ranking, preferred completion first.

    Args:
      ranks: rank per completion, smaller = better, equal = tie, None = flagged.
      flagged: ``"drop"`` pairs with a flagged completion, or rank flagged completions ``"last"``
        (below every ranked one; two flagged completions form no pair).

    Returns:
      The strict pairs ordered by (chosen rank, rejected rank, indices), then with
      ``flagged="last"`` the (ranked, flagged) pairs by indices; and the dropped counts.
    """
    _check_flagged(flagged)
    n = len(ranks)
    ranked = sorted((r, i) for i, r in enumerate(ranks) if r is not None)
    pairs = [(i, j) for a, (ri, i) in enumerate(ranked) for rj, j in ranked[a + 1:] if ri < rj]
    n_ranked = len(ranked)
    total = n * (n - 1) // 2
    ranked_pairs = n_ranked * (n_ranked - 1) // 2
    strict = len(pairs)
    if flagged == "last":
        pairs += [(i, j) for _, i in sorted(ranked, key=lambda x: x[1]) for j in range(n) if ranks[j] is None]
    last = len(pairs) - strict
    return RankingPairs(pairs=tuple(pairs), tied_pairs=ranked_pairs - strict,
                        flagged_pairs=total - ranked_pairs - last, flagged_last_pairs=last)


@dataclass(frozen=True, kw_only=True)
class PairsReport:
    """What a conversion to pairs produced and what it dropped (nothing dropped uncounted)."""

    prompts: int
    """Prompts seen."""

    pairs: int
    """Pairs produced (rows of the dataset)."""

    tied_pairs: int = 0
    """Candidate pairs dropped because the two completions tie."""

    flagged_pairs: int = 0
    """Candidate pairs dropped because a completion is flagged (ranked feedback)."""

    flagged_completions: int = 0
    """Completions flagged by the consensus (ranked feedback)."""

    flagged_last_pairs: int = 0
    """Pairs kept with a flagged completion rejected (``flagged="last"``)."""

    prompts_without_pairs: int = 0
    """Prompts that produced no pair at all."""

    excluded_labelers: tuple[str, ...] = ()
    """Labelers left out for low agreement (ranked feedback)."""

    prompts_without_labelers: int = 0
    """Prompts dropped because every labeler was excluded (ranked feedback)."""

    tied_votes: int = 0
    """Completions with as many ups as downs, left out (binary feedback)."""

    identical_pairs: int = 0
    """Pairs dropped because chosen and rejected are the same text (a model sampled it twice and
    the labelers ranked the copies apart): no preference can be learned from them."""

    margins_clipped: int = 0
    """Pairs kept with ``margin`` 0 although the labelers' mean rank gap was negative (Copeland
    can prefer a completion that a minority ranks far below: see `feedback_to_pairs`)."""

    def summary(self) -> str:
        """One line per non-zero count."""
        items = [(k, v) for k, v in self.__dict__.items() if v]
        return "\n".join(f"{k}: {', '.join(v) if isinstance(v, tuple) else v}"
                         for k, v in items) or "prompts: 0"


def reply(prompt: Prompt, completion: str) -> str | tuple[Message, ...]:
    """A completion in the form its prompt asks: the text, or one assistant message."""
    if isinstance(prompt, str):
        return completion
    return (Message(role="assistant", content=completion),)


def consensus_to_pairs(result: ConsensusResult, *, flagged: str = "drop") -> tuple[datasets.Dataset, PairsReport]:
    """Pairs from an already built consensus; see `feedback_to_pairs`."""
    _check_flagged(flagged)
    rows: list[PairRecord] = []
    tied = flagged_pairs = flagged_last = flagged_count = empty = identical = clipped = 0
    for pc in result.prompts:
        rp = ranking_to_pairs(pc.ranks, flagged=flagged)
        tied += rp.tied_pairs
        flagged_pairs += rp.flagged_pairs
        flagged_last += rp.flagged_last_pairs
        flagged_count += sum(r is None for r in pc.ranks)
        empty += not rp.pairs
        n_lab = len(pc.labelers)
        below = sum(r is not None for r in pc.ranks) + 1  # a flagged completion's rank for every labeler
        for c, r in rp.pairs:
            if pc.completions[c] == pc.completions[r]:
                identical += 1
                continue
            gaps = [(below if v[r] is None else v[r]) - v[c] for v in pc.labeler_ranks]  # type: ignore[operator]
            margin = sum(gaps) / n_lab
            clipped += margin < 0
            rows.append(PairRecord(
                prompt_id=pc.prompt_id, prompt=pc.prompt,
                chosen=reply(pc.prompt, pc.completions[c]),
                rejected=reply(pc.prompt, pc.completions[r]),
                agreement=sum(g > 0 for g in gaps) / n_lab, margin=max(margin, 0.0)))
    report = PairsReport(
        prompts=len(result.prompts) + len(result.prompts_without_labelers), pairs=len(rows),
        tied_pairs=tied, flagged_pairs=flagged_pairs, flagged_completions=flagged_count,
        flagged_last_pairs=flagged_last,
        prompts_without_pairs=empty + len(result.prompts_without_labelers),
        excluded_labelers=result.excluded_labelers,
        prompts_without_labelers=len(result.prompts_without_labelers), identical_pairs=identical,
        margins_clipped=clipped)
    return records_to_dataset(rows), report


def feedback_to_pairs(records: Sequence[RankedFeedback], *,
                      config: ConsensusConfig = ConsensusConfig(), flagged: str = "drop"
                      ) -> tuple[datasets.Dataset, PairsReport]:
    """Ranked feedback to a pairs dataset, through the labelers' consensus.

    Each prompt's consensus ranking (`rlhf_jax.feedback.consensus.build_consensus`) gives its
    n-choose-2 pairs, preferred first; tied pairs are dropped and counted, and so are pairs with
    a flagged completion unless ``flagged="last"`` ranks flagged completions below every other
    (module docstring; their margin takes the flagged completion's rank as one below the last,
    for every labeler).

    Columns: ``agreement`` is the fraction of the prompt's (non-excluded) labelers who ranked
    chosen strictly above rejected; ``margin`` is the mean over those labelers of
    rank(rejected) - rank(chosen) in fractional ranks. For Borda it is the gap of the consensus
    scores, so it is positive. Copeland counts majorities, not gaps, so a mean gap can be
    negative (two labelers put a one place above b, a third puts b three places above a:
    a beats b, mean gap (1 + 1 - 3) / 3 < 0); such a margin is set to 0, the preference's
    least strength, and counted in ``margins_clipped`` (a pair's margin is never negative).

    Message-list prompts give conversational pairs (module docstring).
    """
    return consensus_to_pairs(build_consensus(records, config=config), flagged=flagged)


def binary_to_pairs(records: Sequence[BinaryFeedback]) -> tuple[datasets.Dataset, PairsReport]:
    """Thumbs up/down to pairs: every up completion against every down one of the same prompt.

    Records are grouped by ``prompt_id`` when set, else by prompt text. A completion's votes are
    pooled over labelers: more ups than downs makes it *up*, more downs *down*; as many of each
    makes it undecided (left out, counted in ``tied_votes``). A prompt with no up or no down
    completion gives no pair (counted in ``prompts_without_pairs``).

    Columns: ``agreement`` is the fraction of the votes on the two completions that agree with
    the pair (ups on chosen plus downs on rejected, over all their votes); ``margin`` is None.
    """
    groups: dict[Prompt, dict[str, collections.Counter]] = {}
    prompts: dict[Prompt, tuple[Prompt, str | None]] = {}
    for rec in records:
        key = rec.prompt_id if rec.prompt_id is not None else rec.prompt
        prompts.setdefault(key, (rec.prompt, rec.prompt_id))
        groups.setdefault(key, {}).setdefault(rec.completion, collections.Counter())[
            rec.thumbs] += 1
    rows: list[PairRecord] = []
    tied_votes = empty = 0
    for key, votes in groups.items():
        prompt, prompt_id = prompts[key]
        ups = [c for c, v in votes.items() if v["up"] > v["down"]]
        downs = [c for c, v in votes.items() if v["down"] > v["up"]]
        tied_votes += len(votes) - len(ups) - len(downs)
        empty += not (ups and downs)
        for c in ups:
            for r in downs:
                vc, vr = votes[c], votes[r]
                agree = (vc["up"] + vr["down"]) / (sum(vc.values()) + sum(vr.values()))
                rows.append(PairRecord(prompt_id=prompt_id, prompt=prompt, chosen=reply(prompt, c),
                                       rejected=reply(prompt, r), agreement=agree, margin=None))
    report = PairsReport(prompts=len(groups), pairs=len(rows), tied_votes=tied_votes,
                         prompts_without_pairs=empty)
    return records_to_dataset(rows), report
