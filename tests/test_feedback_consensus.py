"""Labeler consensus (Borda, Copeland), flag majority, agreement table and exclusion."""

import random

import pytest

from rlhf_jax import feedback as fb


def label(name, ranking, flagged=()):
    return fb.Label(labeler=name, ranking=tuple(ranking), flagged=tuple(flagged))


def record(pid, labels, n=None):
    n = n if n is not None else len(labels[0].ranking)
    return fb.RankedFeedback(prompt_id=pid, prompt=f"prompt {pid}",
                             completions=tuple(f"{pid}-c{i}" for i in range(n)),
                             criterion="helpfulness", instructions_id="v1", labels=tuple(labels))


def test_fractional_ranks_worked_example():
    assert fb.fractional_ranks([2, 1, 2, 5]) == [2.5, 1.0, 2.5, 4.0]


def test_borda_by_hand_with_minority_flag():
    # ann flags c2 (1 of 3: not a majority), so for ann c2 is tied last -> fractional ranks
    # ann (2, 1, 3), bob (2, 1, 3), eve (1, 3, 2). Sums: c0 = 5, c1 = 5, c2 = 8 -> c0 ties c1.
    labels = [label("ann", [2, 1, None], [2]), label("bob", [2, 1, 3]), label("eve", [1, 3, 2])]
    ranks, scores, views, votes = fb.consensus_of(labels, 3, method="borda")
    assert ranks == [1, 1, 2]
    assert scores == pytest.approx([5 / 3, 5 / 3, 8 / 3])
    assert views[0] == [2.0, 1.0, 3.0] and votes == [0, 0, 1]


def test_flag_needs_strict_majority():
    two_of_three = [label("a", [1, 2, None], [2]), label("b", [1, None, None], [1, 2]),
                    label("c", [1, 2, 3])]
    ranks, _, _, votes = fb.consensus_of(two_of_three, 3)
    assert votes == [0, 1, 2] and ranks == [1, 2, None]
    one_of_two = [label("a", [1, None], [1]), label("b", [2, 1])]
    assert fb.consensus_of(one_of_two, 2)[0] == [1, 1]  # not flagged; then a tie
    assert fb.consensus_of([label("a", [None, None], [0, 1])], 2)[0] == [None, None]


def test_copeland_differs_from_borda():
    # A > B > C twice, B > C > A once. Borda sums: A 1+1+3 = 5, B 2+2+1 = 5, C 8: A ties B.
    # Copeland: A beats B 2-1, A beats C 2-1, B beats C 3-0 -> scores A +2, B 0, C -2.
    labels = [label("x", [1, 2, 3]), label("y", [1, 2, 3]), label("z", [3, 1, 2])]
    assert fb.consensus_of(labels, 3, method="borda")[0] == [1, 1, 2]
    ranks, scores, _, _ = fb.consensus_of(labels, 3, method="copeland")
    assert ranks == [1, 2, 3] and scores == [2.0, 0.0, -2.0]
    with pytest.raises(ValueError, match="method"):
        fb.ConsensusConfig(method="plurality")


def _crowd(seed=0, prompts=6, n=4):
    """Three careful labelers (one adjacent swap at most) and one who ranks in reverse."""
    rng = random.Random(seed)
    records = []
    for p in range(prompts):
        truth = list(range(1, n + 1))
        rng.shuffle(truth)
        labels = []
        for name in ("ann", "bob", "cid"):
            ranks = list(truth)
            if rng.random() < 0.5:  # a small disagreement: swap ranks 2 and 3
                i, j = ranks.index(2), ranks.index(3)
                ranks[i], ranks[j] = 3, 2
            labels.append(label(name, ranks))
        labels.append(label("rev", [n + 1 - r for r in truth]))
        rng.shuffle(labels)
        records.append(record(f"p{p}", labels))
    return records


@pytest.mark.parametrize("method", ["borda", "copeland"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_reversed_labeler_at_bottom_and_excluded(method, leave_one_out):
    records = _crowd()
    table = fb.agreement_table(records, method=method, leave_one_out=leave_one_out)
    assert [r.labeler for r in table.rows][-1] == "rev" == table.worst().labeler
    rev = table.rows[-1]
    assert rev.agreement < 0.2 and rev.kendall_tau_b < -0.5
    assert all(r.agreement > 0.7 for r in table.rows[:-1])
    assert table.format().splitlines()[-1].startswith("rev")

    config = fb.ConsensusConfig(method=method, min_agreement=0.5, leave_one_out=leave_one_out)
    result = fb.build_consensus(records, config=config)
    assert result.excluded_labelers == ("rev",)
    assert [r.excluded for r in result.table.rows] == [False, False, False, True]
    assert all("rev" not in pc.labelers for pc in result.prompts)
    assert "yes" in result.table.format().splitlines()[-1]


def test_exclusion_improves_pairs_agreement():
    records = _crowd(seed=1)
    ds_all, _ = fb.feedback_to_pairs(records)
    ds_ex, report = fb.feedback_to_pairs(records, config=fb.ConsensusConfig(min_agreement=0.5))
    assert report.excluded_labelers == ("rev",)
    mean = lambda ds: sum(ds["agreement"]) / len(ds)
    assert mean(ds_ex) > mean(ds_all)


def test_prompt_with_only_excluded_labelers_is_dropped_and_counted():
    records = _crowd()
    lonely = record("solo", [label("rev", [1, 2, 3])])
    result = fb.build_consensus([*records, lonely],
                                config=fb.ConsensusConfig(min_agreement=0.5))
    assert result.prompts_without_labelers == ("solo",)
    _, report = fb.consensus_to_pairs(result)
    assert report.prompts == len(records) + 1 and report.prompts_without_labelers == 1


def test_kendall_tau_b_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    # Consensus from the two "ref" labelers (ties included); the probe has its own ties.
    ref = [label("r1", [1, 2, 2, 4, 5, 6]), label("r2", [1, 3, 2, 4, 6, 5])]
    probe = label("probe", [2, 1, 3, 3, 6, 4])
    rec = record("p", [*ref, probe])
    table = fb.agreement_table([rec])
    row = next(r for r in table.rows if r.labeler == "probe")
    cons = fb.consensus_of(rec.labels, 6)[0]
    expected = scipy_stats.kendalltau(probe.ranking, cons, variant="b").statistic
    assert row.kendall_tau_b == pytest.approx(expected)
    # Agreement rate: pairs with a strict consensus preference, the probe's ties not agreeing.
    strict = [(a, b) for a in range(6) for b in range(a + 1, 6) if cons[a] != cons[b]]
    agreed = sum((cons[a] < cons[b]) == (probe.ranking[a] < probe.ranking[b])
                 and probe.ranking[a] != probe.ranking[b] for a, b in strict)
    assert (row.pairs, row.agreed) == (len(strict), agreed)
    assert row.agreement == pytest.approx(agreed / len(strict))


def test_single_labeler_agrees_with_itself_and_undefined_rows_sort_last():
    recs = [record("a", [label("ann", [2, 1, 3])]), record("b", [label("zed", [1])])]
    table = fb.agreement_table(recs)
    assert [(r.labeler, r.agreement, r.kendall_tau_b) for r in table.rows] == [
        ("ann", 1.0, 1.0), ("zed", None, None)]
    assert "n/a" in table.format().splitlines()[-1]
