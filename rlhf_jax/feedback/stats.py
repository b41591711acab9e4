"""Summary counts of a feedback collection (what ``rlhf-jax feedback stats`` prints)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Sequence

from rlhf_jax.feedback.consensus import AgreementTable, ConsensusConfig, build_consensus
from rlhf_jax.feedback.pairs import PairsReport, binary_to_pairs, consensus_to_pairs
from rlhf_jax.feedback.records import BinaryFeedback, PairRecord, RankedFeedback


@dataclass(frozen=True, kw_only=True)
class RankedStats:
    """Counts over ranked feedback."""

    prompts: int
    """Records (one per prompt)."""

    completions: int
    """Completions over all prompts."""

    labels: int
    """Labels (one per labeler and prompt)."""

    labelers: int
    """Distinct labelers."""

    labels_with_ties: int
    """Labels in which at least two ranked completions share a rank."""

    tied_label_pairs: int
    """Pairs of ranked completions that a labeler tied, over all labels."""

    flags: int
    """Flags ("F") over all labels."""

    criteria: dict[str, int]
    """Records per criterion."""

    instructions: dict[str, int]
    """Records per ``instructions_id``."""

    pairs: PairsReport
    """What the conversion to pairs gives (consensus ties and flags included)."""

    table: AgreementTable
    """Labeler agreement with the consensus, worst at the bottom."""

    def format(self) -> str:
        """Human-readable multi-line text."""
        p = self.pairs
        lines = [
            f"prompts: {self.prompts}", f"completions: {self.completions}",
            f"labels: {self.labels} from {self.labelers} labelers",
            f"labels with ties: {self.labels_with_ties} ({self.tied_label_pairs} tied pairs)",
            f"flags (F) in labels: {self.flags}",
            f"criteria: {_fmt(self.criteria)}", f"instructions: {_fmt(self.instructions)}",
            f"consensus ({self.table.method}): {p.pairs} pairs, {p.tied_pairs} tied pairs "
            f"dropped, {p.flagged_pairs} flagged pairs dropped, {p.flagged_completions} "
            f"completions flagged, {p.prompts_without_pairs} prompts without pairs",
        ]
        if p.excluded_labelers:
            lines.append(f"excluded labelers: {', '.join(p.excluded_labelers)} "
                         f"({p.prompts_without_labelers} prompts left without labelers)")
        lines += ["", "labeler agreement with the consensus (worst at the bottom):",
                  self.table.format()]
        return "\n".join(lines)


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "-"


def ranked_stats(records: Sequence[RankedFeedback], *,
                 config: ConsensusConfig = ConsensusConfig()) -> RankedStats:
    """Counts, ties, flags, pair yield and the labeler agreement table."""
    ties = tied_pairs = flags = 0
    for rec in records:
        for label in rec.labels:
            flags += len(label.flagged)
            counts = collections.Counter(r for r in label.ranking if r is not None)
            pairs = sum(c * (c - 1) // 2 for c in counts.values())
            tied_pairs += pairs
            ties += pairs > 0
    result = build_consensus(records, config=config)
    _, report = consensus_to_pairs(result)
    return RankedStats(
        prompts=len(records), completions=sum(len(r.completions) for r in records),
        labels=sum(len(r.labels) for r in records),
        labelers=len({label.labeler for r in records for label in r.labels}),
        labels_with_ties=ties, tied_label_pairs=tied_pairs, flags=flags,
        criteria=dict(collections.Counter(r.criterion for r in records)),
        instructions=dict(collections.Counter(r.instructions_id for r in records)),
        pairs=report, table=result.table)


def binary_stats(records: Sequence[BinaryFeedback]) -> str:
    """Counts of thumbs up/down feedback, as text."""
    thumbs = collections.Counter(r.thumbs for r in records)
    prompts = {r.prompt_id if r.prompt_id is not None else r.prompt for r in records}
    _, report = binary_to_pairs(records)
    return "\n".join([
        f"records: {len(records)} ({thumbs['up']} up, {thumbs['down']} down)",
        f"prompts: {len(prompts)}", f"labelers: {len({r.labeler for r in records})}",
        f"pairs: {report.pairs} ({report.prompts_without_pairs} prompts without both an up and "
        f"a down; {report.tied_votes} completions with tied votes)"])


def pairwise_stats(records: Sequence[PairRecord]) -> str:
    """Counts of pairwise records, as text."""
    with_margin = sum(r.margin is not None for r in records)
    prompts = len({r.prompt_id or r.prompt for r in records})
    return "\n".join([f"pairs: {len(records)}", f"prompts: {prompts}",
                      f"pairs with a margin: {with_margin}",
                      f"pairs with an empty prompt: {sum(not r.prompt for r in records)}"])
