"""Rankings and thumbs to preference pairs; the pairs dataset on disk."""

import math
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_jax import feedback as fb

DATA = pathlib.Path(__file__).parent / "data" / "feedback"
COLUMNS = ["prompt_id", "prompt", "chosen", "rejected", "agreement", "margin"]


def ranked(completions, rankings, flagged=None):
    flagged = flagged or [[] for _ in rankings]
    labels = tuple(fb.Label(labeler=f"l{k}", ranking=tuple(r), flagged=tuple(f))
                   for k, (r, f) in enumerate(zip(rankings, flagged)))
    return fb.RankedFeedback(prompt_id="p", prompt="P", completions=tuple(completions),
                             criterion="helpfulness", instructions_id="v1", labels=labels)


def test_seed_example_rank_2_1_3():
    # The course notes: three completions ranked 2, 1, 3 give 3 pairs, preferred first.
    rp = fb.ranking_to_pairs([2, 1, 3])
    assert rp.pairs == ((1, 0), (1, 2), (0, 2)) and rp.tied_pairs == rp.flagged_pairs == 0


def test_ties_and_flags_dropped_and_counted():
    rp = fb.ranking_to_pairs([1, 2, 2, None, 4])
    # C(5,2) = 10: 5 pairs kept, 1 tie (2, 2), 4 pairs touching the flagged completion.
    assert rp.pairs == ((0, 1), (0, 2), (0, 4), (1, 4), (2, 4))
    assert (rp.tied_pairs, rp.flagged_pairs) == (1, 4)


@st.composite
def tie_free_rankings(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    ranks = draw(st.permutations(list(range(1, n + 1))))
    perm = draw(st.permutations(list(range(n))))
    return list(ranks), perm


@settings(max_examples=60, deadline=None)
@given(tie_free_rankings())
def test_tie_free_ranking_gives_n_choose_2_pairs_invariant_to_storage_order(case):
    ranks, perm = case
    n = len(ranks)
    texts = [f"completion {i}" for i in range(n)]
    ds, report = fb.feedback_to_pairs([ranked(texts, [ranks])])
    assert len(ds) == report.pairs == n * (n - 1) // 2 == math.comb(n, 2)
    assert report.tied_pairs == report.flagged_pairs == 0
    rank_of = dict(zip(texts, ranks))
    assert all(rank_of[c] < rank_of[r] for c, r in zip(ds["chosen"], ds["rejected"]))
    # Store the same completions (with their ranks) in another order: same set of pairs.
    ds2, _ = fb.feedback_to_pairs([ranked([texts[i] for i in perm], [[ranks[i] for i in perm]])])
    assert set(zip(ds["chosen"], ds["rejected"])) == set(zip(ds2["chosen"], ds2["rejected"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(1, 4)), min_size=0, max_size=8))
def test_every_candidate_pair_is_kept_or_counted(ranks):
    rp = fb.ranking_to_pairs(ranks)
    n = len(ranks)
    assert len(rp.pairs) + rp.tied_pairs + rp.flagged_pairs == n * (n - 1) // 2
    assert all(ranks[c] < ranks[r] for c, r in rp.pairs)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_consensus_pairs_invariant_to_storage_order(data):
    n = data.draw(st.integers(2, 6))
    labelers = data.draw(st.integers(1, 4))
    rankings = [data.draw(st.lists(st.integers(1, n), min_size=n, max_size=n))
                for _ in range(labelers)]
    perm = data.draw(st.permutations(list(range(n))))
    texts = [f"c{i}" for i in range(n)]
    rec = ranked(texts, rankings)
    rec2 = ranked([texts[i] for i in perm], [[r[i] for i in perm] for r in rankings])
    for method in ("borda", "copeland"):
        config = fb.ConsensusConfig(method=method)
        (ds, rep), (ds2, rep2) = (fb.feedback_to_pairs([r], config=config) for r in (rec, rec2))
        rows = lambda d: sorted(zip(d["chosen"], d["rejected"], d["agreement"], d["margin"]))
        assert rows(ds) == rows(ds2) and rep == rep2
        assert rep.pairs + rep.tied_pairs + rep.flagged_pairs == n * (n - 1) // 2


def test_ranked_pairs_columns_agreement_and_margin():
    records, _ = fb.read_ranked(DATA / "ranked_good.jsonl")
    ds, report = fb.feedback_to_pairs(records)
    assert ds.column_names == COLUMNS
    # ann (2, 1, F) and bob (2, 1, 3): c2 flagged by 1 of 2 (no majority) -> tied last for ann.
    # Fractional ranks: ann (2, 1, 3), bob (2, 1, 3) -> consensus c1 > c0 > c2, 3 pairs each.
    assert report.pairs == 6 and report.prompts == 2 and report.flagged_completions == 0
    first = ds[0]
    assert (first["chosen"], first["rejected"]) == ("Open the windows at night.",
                                                    "There is nothing you can do.")
    assert first["agreement"] == 1.0 and first["margin"] == 1.0
    assert ds[1]["margin"] == 2.0  # c1 vs c2: both labelers 1 vs 3


def test_flagged_by_majority_and_ties_are_counted():
    rec = ranked(["a", "b", "c", "d"], [[1, 2, 2, None], [1, 3, 2, None], [1, 2, 2, 4]],
                 flagged=[[3], [3], []])
    ds, report = fb.feedback_to_pairs([rec])
    # d flagged 2 of 3. Over a, b, c the fractional ranks are (1, 2.5, 2.5), (1, 3, 2),
    # (1, 2.5, 2.5): sums b = 8, c = 7 -> a > c > b; 3 pairs + 0 ties + 3 flagged pairs.
    assert (report.pairs, report.tied_pairs, report.flagged_pairs) == (3, 0, 3)
    assert report.flagged_completions == 1
    assert list(zip(ds["chosen"], ds["rejected"])) == [("a", "c"), ("a", "b"), ("c", "b")]
    assert ds[2]["agreement"] == pytest.approx(1 / 3)  # only labeler 1 put c strictly above b


def test_binary_to_pairs():
    records, _ = fb.read_binary(DATA / "binary_good.jsonl")
    ds, report = fb.binary_to_pairs(records)
    # q1: "a furry animal" up (ann, bob), "green" down (ann) -> 1 pair, all 3 votes agree.
    # q2: only an up. q3: "wet" up, "dry" one up one down (tied votes) -> no down.
    assert list(zip(ds["prompt_id"], ds["chosen"], ds["rejected"])) == [
        ("q1", "a furry animal", "green")]
    assert ds[0]["agreement"] == 1.0 and ds[0]["margin"] is None
    assert (report.prompts, report.pairs, report.prompts_without_pairs, report.tied_votes) == (
        3, 1, 2, 1)


def test_binary_grouped_by_prompt_text_without_id():
    b = lambda c, t, who: fb.BinaryFeedback(prompt="P", completion=c, labeler=who, thumbs=t)
    ds, report = fb.binary_to_pairs([b("good", "up", "a"), b("bad", "down", "a"),
                                     b("bad", "up", "b"), b("worse", "down", "b"),
                                     b("bad", "down", "c")])
    assert sorted(zip(ds["chosen"], ds["rejected"])) == [("good", "bad"), ("good", "worse")]
    assert ds["prompt_id"] == [None, None]
    # good (1 up) vs bad (2 down, 1 up): 3 of 4 votes agree.
    assert dict(zip(ds["rejected"], ds["agreement"]))["bad"] == 0.75


@pytest.mark.parametrize("ext", [".parquet", ".jsonl"])
def test_pairs_dataset_save_load(tmp_path, ext):
    records, _ = fb.read_ranked(DATA / "ranked_good.jsonl")
    ds, _ = fb.feedback_to_pairs(records)
    path = tmp_path / f"pairs{ext}"
    fb.save_pairs(ds, path)
    back = fb.load_pairs(path)
    assert back.column_names == COLUMNS and back.to_list() == ds.to_list()
    with pytest.raises(ValueError, match="cannot tell the format"):
        fb.save_pairs(ds, tmp_path / "pairs.csv")


def test_load_pairs_from_prefix_form_jsonl():
    ds = fb.load_pairs(DATA / "pairwise_good.jsonl")
    assert ds.column_names == COLUMNS
    assert ds["prompt"] == ["A dog is", "Human: Is a dog furry?\n\nAssistant:"]
    assert ds["margin"] == [2.0, None]


def test_identical_completions_ranked_apart_give_no_pair_and_are_counted():
    from rlhf_jax.feedback import Label, RankedFeedback, feedback_to_pairs

    rec = RankedFeedback(prompt_id="p", prompt="A dog is", completions=("furry", "furry", "green"),
                         criterion="helpful", instructions_id="v1",
                         labels=(Label(labeler="a", ranking=(1, 2, 3), flagged=()),))
    pairs, report = feedback_to_pairs([rec])
    # 3 strict pairs: (0,1) is the same text twice -> dropped and counted; (0,2), (1,2) kept
    assert report.identical_pairs == 1 and report.pairs == 2 == len(pairs)
    assert all(row["chosen"] != row["rejected"] for row in pairs)
