"""Flagged completions ranked last: every (ranked, flagged) pair is kept with the flagged completion
rejected, worked by hand; the counts still add up to n-choose-2; bad values are refused."""

import math

import pytest

from rlhf_jax import feedback as fb


def test_ranking_to_pairs_flagged_last():
    # ranks 2, F, 1, 2, F: strict pairs (2, 0), (2, 3); one tie (0, 3); then every ranked
    # completion (0, 2, 3 by index) against each flagged one (1, 4); the flagged pair (1, 4) dropped
    rp = fb.ranking_to_pairs([2, None, 1, 2, None], flagged="last")
    assert rp.pairs == ((2, 0), (2, 3), (0, 1), (0, 4), (2, 1), (2, 4), (3, 1), (3, 4))
    assert (rp.tied_pairs, rp.flagged_pairs, rp.flagged_last_pairs) == (1, 1, 6)
    assert len(rp.pairs) + rp.tied_pairs + rp.flagged_pairs == math.comb(5, 2)
    drop = fb.ranking_to_pairs([2, None, 1, 2, None])
    assert drop.pairs == ((2, 0), (2, 3)) and (drop.flagged_pairs, drop.flagged_last_pairs) == (7, 0)
    with pytest.raises(ValueError, match="flagged must be one of"):
        fb.ranking_to_pairs([1, 2], flagged="first")


def test_feedback_to_pairs_flagged_last_by_hand():
    # Completions a b c d; c flagged by 2 of 3 labelers (a majority), so the consensus flags it.
    # Fractional ranks over a, b, d: l0 (1, 2, 3), l1 (2, 1, 3), l2 (1, 2, 3) [its 1, 3, 4];
    # Borda means a 4/3, b 5/3, d 3 -> a > b > d.
    labels = (fb.Label(labeler="l0", ranking=(1, 2, None, 3), flagged=(2,)),
              fb.Label(labeler="l1", ranking=(2, 1, None, 3), flagged=(2,)),
              fb.Label(labeler="l2", ranking=(1, 3, 2, 4), flagged=()))
    rec = fb.RankedFeedback(prompt_id="p", prompt="P", completions=("a", "b", "c", "d"), criterion="helpfulness",
                            instructions_id="v1", labels=labels)
    ds, report = fb.feedback_to_pairs([rec], flagged="last")
    rows = {(r["chosen"], r["rejected"]): (r["agreement"], r["margin"]) for r in ds}
    assert list(rows) == [("a", "b"), ("a", "d"), ("b", "d"), ("a", "c"), ("b", "c"), ("d", "c")]
    # the flagged c counts as rank 4 (one below the 3 ranked) for every labeler:
    # (a, c): gaps 4 - 1, 4 - 2, 4 - 1 -> margin 8/3; (d, c): gaps 1, 1, 1 -> margin 1
    assert rows["a", "c"] == pytest.approx((1.0, 8 / 3)) and rows["d", "c"] == pytest.approx((1.0, 1.0))
    assert rows["a", "b"] == pytest.approx((2 / 3, 1 / 3))  # gaps 1, -1, 1 (l2's b is 2 over a, b, d)
    assert (report.pairs, report.flagged_pairs, report.flagged_last_pairs, report.flagged_completions) == (6, 0, 3, 1)
    ds_drop, report_drop = fb.feedback_to_pairs([rec])
    assert len(ds_drop) == 3 and (report_drop.flagged_pairs, report_drop.flagged_last_pairs) == (3, 0)
    assert "flagged_last_pairs: 3" in report.summary()
