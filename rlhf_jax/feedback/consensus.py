"""Labeler consensus: aggregate several labelers' rankings of one prompt into one ranking.

Rules (the same for every method):

* **Flags.** A completion is flagged in the consensus when a strict majority of the prompt's
  labelers flagged it (more than half; one of two labelers is not a majority). Flagged
  completions leave the consensus ranking.
* **A labeler's view.** Over the remaining completions S, each labeler's ranking becomes
  *fractional ranks* 1..|S| (tied completions share the mean of their positions). A completion
  this labeler flagged but the majority did not counts as tied last for this labeler: a flag says
  "worse than anything ranked".
* **Methods.**
  ``"borda"`` (mean rank): a completion's score is its mean fractional rank over labelers; lower
  is better; equal means tie.
  ``"copeland"`` (pairwise majority): completion i beats j when more labelers put i above j than
  j above i; the score is wins minus losses; higher is better; equal scores tie.
  The consensus ranks are dense ranks of the scores (1 = best).

Agreement of a labeler with the consensus is measured on pairs of completions of the same prompt:
the *agreement rate* is the fraction of pairs with a strict consensus preference on which the
labeler prefers the same completion (a labeler's tie counts as not agreeing), and Kendall's
tau-b is computed on all such pairs pooled over the labeler's prompts (ties on either side
handled as in tau-b). With ``leave_one_out`` the consensus a labeler is compared with is built
without that labeler.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

from rlhf_jax.config_checks import check, in_range, one_of
from rlhf_jax.feedback.records import Label, Prompt, RankedFeedback

Method = Literal["borda", "copeland"]
METHODS = ("borda", "copeland")


@dataclass(frozen=True, kw_only=True)
class ConsensusConfig:
    """How to aggregate labelers."""

    method: Method = "borda"
    """``"borda"`` (mean rank) or ``"copeland"`` (pairwise majority); see the module docstring."""

    min_agreement: float | None = None
    """Exclude labelers whose agreement rate with the consensus is below this (then rebuild
    the consensus without them); None keeps everyone. Labelers with no comparable pair are kept."""

    leave_one_out: bool = False
    """Compare each labeler with the consensus of the *other* labelers (fairer with few
    labelers: one's own vote does not pull the consensus toward oneself)."""

    def __post_init__(self):
        one_of(self, "method", METHODS)
        in_range(self, "min_agreement", 0, 1, optional=True)
        check(self, "leave_one_out", isinstance(self.leave_one_out, bool), "a boolean")


@dataclass(frozen=True, kw_only=True)
class PromptConsensus:
    """The consensus ranking of one prompt's completions."""

    prompt_id: str
    """The prompt's id."""

    prompt: Prompt
    """The prompt text, or its message list."""

    completions: tuple[str, ...]
    """The completions, in storage order."""

    ranks: tuple[int | None, ...]
    """Consensus rank per completion: 1 = best, equal = tie, None = flagged by the majority."""

    scores: tuple[float | None, ...]
    """Method score per completion (Borda: mean rank, lower is better; Copeland: wins - losses,
    higher is better); None when flagged."""

    labelers: tuple[str, ...]
    """The labelers the consensus was built from (after any exclusion)."""

    labeler_ranks: tuple[tuple[float | None, ...], ...]
    """Per labeler (same order as ``labelers``), fractional ranks over the unflagged
    completions (None for flagged ones)."""

    flag_votes: tuple[int, ...]
    """How many of ``labelers`` flagged each completion."""


def fractional_ranks(keys: Sequence[float]) -> list[float]:
    """1-based ranks of ``keys`` (smaller key = better), ties sharing their mean position.

    Example: keys (2, 1, 2, 5) -> ranks (2.5, 1.0, 2.5, 4.0).
    """
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    out = [0.0] * len(keys)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and keys[order[end + 1]] == keys[order[start]]:
            end += 1
        mean = (start + end) / 2 + 1
        for k in range(start, end + 1):
            out[order[k]] = mean
        start = end + 1
    return out


def _dense_ranks(scores: Sequence[float]) -> list[int]:
    """Dense ranks, 1 for the smallest score, equal scores equal rank."""
    levels = {s: r for r, s in enumerate(sorted(set(scores)), start=1)}
    return [levels[s] for s in scores]


def consensus_of(labels: Sequence[Label], n: int, *, method: Method = "borda"
                 ) -> tuple[list[int | None], list[float | None], list[list[float | None]],
                            list[int]]:
    """Consensus of ``labels`` over ``n`` completions.

    Returns:
      ``(ranks, scores, labeler_ranks, flag_votes)`` as in `PromptConsensus`.
    """
    flag_votes = [sum(i in label.flagged for label in labels) for i in range(n)]
    kept = [i for i in range(n) if 2 * flag_votes[i] <= len(labels)]
    views: list[list[float | None]] = []
    for label in labels:
        keys = [math.inf if label.ranking[i] is None else float(label.ranking[i]) for i in kept]
        frac = fractional_ranks(keys)
        view: list[float | None] = [None] * n
        for i, r in zip(kept, frac):
            view[i] = r
        views.append(view)
    ranks: list[int | None] = [None] * n
    scores: list[float | None] = [None] * n
    if kept and labels:
        if method == "borda":
            # Sums of half-integers are exact in floating point, so equal means are equal.
            sums = [sum(v[i] for v in views) for i in kept]  # type: ignore[misc]
            order_key = sums
            for i, s in zip(kept, sums):
                scores[i] = s / len(labels)
        elif method == "copeland":
            cope = {i: 0 for i in kept}
            for a_pos, a in enumerate(kept):
                for b in kept[a_pos + 1:]:
                    pref = sum((v[a] < v[b]) - (v[b] < v[a]) for v in views)  # type: ignore
                    cope[a] += (pref > 0) - (pref < 0)
                    cope[b] += (pref < 0) - (pref > 0)
            order_key = [-cope[i] for i in kept]
            for i in kept:
                scores[i] = float(cope[i])
        else:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        for i, r in zip(kept, _dense_ranks(order_key)):
            ranks[i] = r
    return ranks, scores, views, flag_votes


@dataclass(frozen=True, kw_only=True)
class LabelerAgreement:
    """One labeler's agreement with the consensus, over all prompts they labeled."""

    labeler: str
    """Labeler id."""

    prompts: int
    """Prompts this labeler labeled."""

    pairs: int
    """Completion pairs with a strict consensus preference that were compared."""

    agreed: int
    """Of ``pairs``: the labeler preferred the same completion."""

    disagreed: int
    """Of ``pairs``: the labeler preferred the other completion."""

    tied: int
    """Of ``pairs``: the labeler ranked both completions equal."""

    agreement: float | None
    """``agreed / pairs``; None when ``pairs == 0``."""

    kendall_tau_b: float | None
    """Kendall tau-b between the labeler's and the consensus ranks, pooled over prompts
    (within-prompt pairs only); None when undefined (all pairs tied on one side)."""

    excluded: bool = False
    """True when the labeler fell below ``min_agreement`` and was left out of the consensus."""


@dataclass(frozen=True, kw_only=True)
class AgreementTable:
    """Labelers sorted by agreement with the consensus: best first, worst (and undefined) last."""

    rows: tuple[LabelerAgreement, ...]
    """One row per labeler."""

    method: str
    """Consensus method the agreement was measured against."""

    def format(self) -> str:
        """The table as aligned text (worst labeler at the bottom)."""
        head = ("labeler", "prompts", "pairs", "agreement", "kendall_tau_b", "excluded")
        body = [(r.labeler, str(r.prompts), str(r.pairs),
                 "n/a" if r.agreement is None else f"{r.agreement:.3f}",
                 "n/a" if r.kendall_tau_b is None else f"{r.kendall_tau_b:+.3f}",
                 "yes" if r.excluded else "") for r in self.rows]
        widths = [max(len(row[k]) for row in (head, *body)) for k in range(len(head))]
        lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w)
                           for k, (c, w) in enumerate(zip(row, widths))).rstrip()
                 for row in (head, *body)]
        return "\n".join(lines)

    def worst(self) -> LabelerAgreement | None:
        """The row at the bottom of the table (lowest defined agreement), if any."""
        defined = [r for r in self.rows if r.agreement is not None]
        return defined[-1] if defined else None


@dataclass
class _Counts:
    prompts: int = 0
    c: int = 0  # concordant (agreed)
    d: int = 0  # discordant (disagreed)
    ties_labeler: int = 0  # labeler tie, consensus strict
    ties_consensus: int = 0  # consensus tie, labeler strict

    def row(self, labeler: str, excluded: bool) -> LabelerAgreement:
        pairs = self.c + self.d + self.ties_labeler
        denom = math.sqrt((self.c + self.d + self.ties_consensus) * pairs)
        return LabelerAgreement(
            labeler=labeler, prompts=self.prompts, pairs=pairs, agreed=self.c,
            disagreed=self.d, tied=self.ties_labeler,
            agreement=self.c / pairs if pairs else None,
            kendall_tau_b=(self.c - self.d) / denom if denom else None, excluded=excluded)


def agreement_table(records: Sequence[RankedFeedback], *, method: Method = "borda",
                    leave_one_out: bool = False,
                    excluded: frozenset[str] = frozenset()) -> AgreementTable:
    """Each labeler's agreement with the consensus (see the module docstring).

    ``excluded`` only marks rows; the consensus here is built from every labeler.
    """
    counts: dict[str, _Counts] = {}
    for rec in records:
        n = len(rec.completions)
        labels = rec.labels
        full = consensus_of(labels, n, method=method)
        for k, label in enumerate(labels):
            cnt = counts.setdefault(label.labeler, _Counts())
            cnt.prompts += 1
            if leave_one_out:
                others = labels[:k] + labels[k + 1:]
                if not others:
                    continue
                ranks, _, _, _ = consensus_of(others, n, method=method)
                # This labeler's view over the completions the others did not flag.
                kept = [i for i in range(n) if ranks[i] is not None]
                keys = [math.inf if label.ranking[i] is None else label.ranking[i] for i in kept]
                mine = dict(zip(kept, fractional_ranks(keys)))
                view = [mine.get(i) for i in range(n)]
            else:
                ranks, view = full[0], full[2][k]
            kept = [i for i in range(n) if ranks[i] is not None]
            for a_pos, a in enumerate(kept):
                for b in kept[a_pos + 1:]:
                    cons = (ranks[a] > ranks[b]) - (ranks[a] < ranks[b])  # type: ignore
                    mine_ab = (view[a] > view[b]) - (view[a] < view[b])  # type: ignore
                    if cons == 0:
                        cnt.ties_consensus += mine_ab != 0
                    elif mine_ab == 0:
                        cnt.ties_labeler += 1
                    elif mine_ab == cons:
                        cnt.c += 1
                    else:
                        cnt.d += 1
    rows = [cnt.row(name, name in excluded) for name, cnt in counts.items()]
    rows.sort(key=lambda r: (r.agreement is None, -(r.agreement or 0.0),
                             -(r.kendall_tau_b if r.kendall_tau_b is not None else -2.0),
                             r.labeler))
    return AgreementTable(rows=tuple(rows), method=method)


@dataclass(frozen=True, kw_only=True)
class ConsensusResult:
    """Consensus of every prompt, the labeler agreement table and what was left out."""

    prompts: tuple[PromptConsensus, ...]
    """One consensus per prompt that kept at least one labeler."""

    table: AgreementTable
    """Agreement of every labeler with the consensus of all labelers (before exclusion)."""

    excluded_labelers: tuple[str, ...] = ()
    """Labelers below ``min_agreement``, left out of ``prompts``."""

    prompts_without_labelers: tuple[str, ...] = field(default=())
    """Prompt ids dropped because every one of their labelers was excluded."""


def build_consensus(records: Sequence[RankedFeedback], *,
                    config: ConsensusConfig = ConsensusConfig()) -> ConsensusResult:
    """Consensus per prompt, agreement table, and optional exclusion of poor labelers.

    The agreement table is computed once with every labeler; labelers whose agreement rate is
    below ``config.min_agreement`` are then excluded everywhere and each consensus is rebuilt
    from the remaining labelers (one round, not iterated). A prompt whose labelers were all
    excluded is dropped and listed in ``prompts_without_labelers``.
    """
    table = agreement_table(records, method=config.method, leave_one_out=config.leave_one_out)
    excluded: set[str] = set()
    if config.min_agreement is not None:
        excluded = {r.labeler for r in table.rows
                    if r.agreement is not None and r.agreement < config.min_agreement}
        table = AgreementTable(rows=tuple(
            dataclasses.replace(r, excluded=r.labeler in excluded) for r in table.rows),
            method=table.method)
    prompts: list[PromptConsensus] = []
    dropped: list[str] = []
    for rec in records:
        labels = [label for label in rec.labels if label.labeler not in excluded]
        if not labels:
            dropped.append(rec.prompt_id)
            continue
        ranks, scores, views, votes = consensus_of(labels, len(rec.completions),
                                                   method=config.method)
        prompts.append(PromptConsensus(
            prompt_id=rec.prompt_id, prompt=rec.prompt, completions=rec.completions,
            ranks=tuple(ranks), scores=tuple(scores),
            labelers=tuple(label.labeler for label in labels),
            labeler_ranks=tuple(tuple(v) for v in views), flag_votes=tuple(votes)))
    return ConsensusResult(prompts=tuple(prompts), table=table,
                           excluded_labelers=tuple(sorted(excluded)),
                           prompts_without_labelers=tuple(dropped))
