"""From the labeling database to the feedback module: ranked records, the agreement table, and
the exported ranked JSONL file (validated by `rlhf_jax.feedback.read_ranked`, strictly)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlhf_jax.label.store import LabelStore


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """What `export_ranked` wrote."""

    path: str
    """The file written."""

    prompts: int
    """Records written (prompts with at least one answer)."""

    labels: int
    """Answers written (one per labeler and prompt)."""

    prompts_unlabeled: int
    """Prompts without any answer yet: not written (a ranked record needs one label)."""

    prompts_complete: int
    """Prompts with at least L answers."""

    def summary(self) -> str:
        """One line of counts."""
        return (f"{self.path}: {self.prompts} prompts, {self.labels} labels "
                f"({self.prompts_complete} prompts with all their labelers); "
                f"{self.prompts_unlabeled} prompts without labels not written")


def ranked_records(store: LabelStore) -> list:
    """Every labeled prompt as a validated `rlhf_jax.feedback.RankedFeedback` (storage order of
    completions, labels sorted by labeler name)."""
    from rlhf_jax.feedback import parse_ranked

    out = []
    for item, labels in store.labeled_prompts():
        obj = {"prompt_id": item.prompt_id, "prompt": item.prompt,
               "completions": list(item.completions), "criterion": store.criterion,
               "instructions_id": store.instructions_id,
               "labels": [{"labeler": name, "ranking": ranking, "flagged": flagged}
                          for name, ranking, flagged in labels]}
        out.append(parse_ranked(obj, file=store.path, line=None))
    return out


def agreement(store: LabelStore, *, method: str = "borda"):
    """The labelers' agreement with the consensus (`rlhf_jax.feedback.build_consensus`), or
    None before any answer."""
    from rlhf_jax.feedback import ConsensusConfig, build_consensus

    records = ranked_records(store)
    if not records:
        return None
    return build_consensus(records, config=ConsensusConfig(method=method)).table


def export_ranked(store: LabelStore, out: str | os.PathLike) -> ExportReport:
    """Write the ranked JSONL file and read it back with the feedback module (strict)."""
    from rlhf_jax.feedback import read_ranked, write_jsonl

    out = os.fspath(out)
    records = ranked_records(store)
    tmp = out + ".tmp"
    write_jsonl(records, tmp)
    back, report = read_ranked(tmp, strict=True)
    if len(back) != len(records) or back != tuple(records):
        raise RuntimeError(f"{out}: the file read back differs from the database's answers")
    os.replace(tmp, out)
    totals = store.totals()
    return ExportReport(path=out, prompts=report.n_valid,
                        labels=sum(len(r.labels) for r in records),
                        prompts_unlabeled=totals["prompts"] - len(records),
                        prompts_complete=totals["prompts_complete"])
