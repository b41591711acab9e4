"""Collapse diagnostics and per-group statistics: hand-worked values, the leave-one-prompt-out
shortcuts against a brute-force recomputation, per-group = the group's own report, edge cases of
the intervals, compare() ratios, and the JSON / Markdown / PNG outputs."""

import collections
import json
import math

import numpy as np
import pytest

from rlhf_jax.evaluate import (COLLAPSE_METRICS, CompletionCounts, EvaluationReport, compare, completion_ids,
                               format_comparison, jackknife_interval, resolve_groups)
from rlhf_jax.evaluate.diversity import check_probabilities

# 3 prompts x 2 samples: p0 says "a" twice, p1 "a" and "b", p2 "c" and "d".
HAND = [["a", "a"], ["a", "b"], ["c", "d"]]


def _stats(completions):
    counts = CompletionCounts.from_ids(completion_ids(completions))
    return {k: counts.statistic(k) for k in COLLAPSE_METRICS}


def test_collapse_statistics_by_hand():
    st = _stats(HAND)
    # N = 6 completions, K = 4 strings (a b c d): unique ratio 4/6. Leaving a prompt out:
    # p0 -> a b c d: 4/4; p1 -> a a c d: 3/4; p2 -> a a a b: 2/4.
    est, loo = st["unique_ratio"]
    assert est == pytest.approx(4 / 6) and loo == pytest.approx([1.0, 0.75, 0.5])
    # Jackknife SE: loo mean 0.75, sqrt(2/3 * (0.25^2 + 0 + 0.25^2)) = sqrt(1/12) = 0.288675.
    assert jackknife_interval(est, loo).se == pytest.approx(0.288675, abs=1e-6)
    # "a" is written for p0 (twice) and p1 (once): those 3 of 6 completions are shared across
    # prompts; b, c, d belong to one prompt each. Without p0 or p1 no string is shared; without
    # p2, 3 of the 4 completions left are "a" (p0 and p1) -> 0.75.
    est, loo = st["cross_prompt_share"]
    assert est == pytest.approx(0.5) and loo == pytest.approx([0.0, 0.0, 0.75])
    # Counts a:3 b:1 c:1 d:1 -> H = -(1/2 log2 1/2 + 3 * 1/6 log2 1/6) = 0.5 + 0.5 log2 6 = 1.792481 bits.
    # Without p0: four singletons, log2 4 = 2; without p1: a:2 c:1 d:1 -> 0.5 + 0.25*2 + 0.25*2 = 1.5;
    # without p2: a:3 b:1 -> 0.75 log2(4/3) + 0.25 log2 4 = 0.311278 + 0.5 = 0.811278.
    est, loo = st["entropy_bits"]
    assert est == pytest.approx(1.792481, abs=1e-6) and loo == pytest.approx([2.0, 1.5, 0.811278], abs=1e-6)
    # Only p0's two samples are the same: 1/3; leaving p0 out 0/2, p1 or p2 out 1/2.
    est, loo = st["all_identical_share"]
    assert est == pytest.approx(1 / 3) and loo == pytest.approx([0.0, 0.5, 0.5])
    # 4 distinct strings; p0 alone wrote none of them, p1 alone "b", p2 alone "c" and "d".
    est, loo = st["distinct_outputs"]
    assert est == 4 and loo == pytest.approx([4, 3, 2])


def _brute(completions, metric):
    """Each statistic straight from its definition (collections.Counter), no shortcut."""
    flat = [t for row in completions for t in row]
    n = collections.Counter(flat)
    if metric == "unique_ratio":
        return len(n) / len(flat)
    if metric == "distinct_outputs":
        return float(len(n))
    if metric == "entropy_bits":
        return -sum(c / len(flat) * math.log2(c / len(flat)) for c in n.values())
    if metric == "all_identical_share":
        return float(np.mean([len(set(row)) == 1 for row in completions]))
    writers = collections.defaultdict(set)
    for p, row in enumerate(completions):
        for t in row:
            writers[t].add(p)
    return sum(len(writers[t] - {p}) > 0 for p, row in enumerate(completions) for t in row) / len(flat)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_shortcuts_match_a_brute_force_recomputation(seed):
    rng = np.random.default_rng(seed)
    completions = [[f"c{x}" for x in row] for row in rng.integers(0, 6, size=(9, 3))]  # many repeats
    for metric, (est, loo) in _stats(completions).items():
        assert est == pytest.approx(_brute(completions, metric), abs=1e-12), metric
        expected = [_brute(completions[:p] + completions[p + 1:], metric) for p in range(len(completions))]
        assert loo == pytest.approx(expected, abs=1e-12), metric


def test_interval_edge_cases():
    same = _stats([["x", "x"]] * 3)  # all six completions identical
    assert same["unique_ratio"][0] == pytest.approx(1 / 6) and same["cross_prompt_share"][0] == 1.0
    assert same["entropy_bits"][0] == 0.0 and same["all_identical_share"][0] == 1.0
    differ = _stats([["a", "b"], ["c", "d"], ["e", "f"]])  # all distinct
    assert differ["unique_ratio"][0] == 1.0 and differ["cross_prompt_share"][0] == 0.0
    assert differ["entropy_bits"][0] == pytest.approx(math.log2(6)) and differ["all_identical_share"][0] == 0.0
    for st in (same, differ):  # every prompt alike: nothing varies when one is left out -> SE 0
        for k in ("unique_ratio", "cross_prompt_share", "all_identical_share"):
            iv = jackknife_interval(*st[k])
            assert iv.se == 0.0 and iv.low == iv.high == iv.mean
    # The entropy of the all-distinct case drops from log2 6 to log2 4 without any prompt: SE 0 too.
    assert jackknife_interval(*differ["entropy_bits"]).se == 0.0
    one = _stats([["a", "b"]])  # a single prompt: an estimate, no interval
    assert one["unique_ratio"][0] == 1.0 and np.isnan(one["unique_ratio"][1]).all()
    iv = jackknife_interval(*one["entropy_bits"])
    assert iv.mean == 1.0 and math.isnan(iv.low) and iv.n == 1


def _report(groups=("g1", "g1", "g2", "g2", "g3"), **kw):
    """5 prompts x 2 samples, two models; 'ppo' collapses onto one answer in g1 and g2."""
    sft = [["a b", "b c"], ["c d", "d e"], ["e f", "f g"], ["g h", "a b"], ["h i", "i j"]]
    ppo = [["x y", "x y"], ["x y", "x y"], ["x y", "z"], ["x y", "x y"], ["h i", "q"]]
    gold = {"sft": [[1.0, 0.5], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0], [0.5, 0.5]],
            "ppo": [[2.0, 2.0], [-1.0, -1.0], [0.0, 1.0], [1.0, 1.0], [3.0, 1.0]]}
    tox = {"sft": [[1, 0], [0, 0], [1, 1], [0, 0], [0, 1]], "ppo": [[0, 0], [0, 0], [1, 0], [0, 0], [0, 0]]}
    values = {m: {"gold": np.array(gold[m]), "toxicity": np.array(tox[m], float)} for m in ("sft", "ppo")}
    metrics = ["gold", "toxicity", "distinct_1", "unique_ratio", "cross_prompt_share", "entropy_bits",
               "all_identical_share"]
    return EvaluationReport(models=["sft", "ppo"], metrics=metrics, prompts=[f"p{i}" for i in range(5)],
                            values=values, completions={"sft": sft, "ppo": ppo}, settings=dict(kw),
                            groups=None if groups is None else list(groups))


def _sub(report, idx):
    """The report the prompts ``idx`` alone would have given."""
    return EvaluationReport(models=report.models, metrics=report.metrics, prompts=[report.prompts[i] for i in idx],
                            values={m: {k: v[idx] for k, v in d.items()} for m, d in report.values.items()},
                            completions={m: [c[i] for i in idx] for m, c in report.completions.items()},
                            settings=report.settings)


@pytest.mark.parametrize("ci", ["normal", "bootstrap"])
def test_a_group_is_its_own_evaluation(ci):
    report = _report(ci=ci)
    assert report.group_names == ["g1", "g2", "g3"]
    for g, idx in {"g1": [0, 1], "g2": [2, 3], "g3": [4]}.items():
        assert report.group_indices(g).tolist() == idx
        np.testing.assert_equal(report.by_group[g], _sub(report, idx).summary)  # NaN == NaN here
    # ppo in g1: 4 x "x y" -> unique 1/4, all shared with the other prompt, entropy 0, both prompts same.
    g1 = report.means("g1")["ppo"]
    assert (g1["unique_ratio"], g1["cross_prompt_share"], g1["entropy_bits"], g1["all_identical_share"]) == (
        0.25, 1.0, 0.0, 1.0)
    # Over all prompts: x y x 7, z, h i, q -> 4 strings of 10; "x y" is written for p0..p3: 7/10 shared.
    assert report.means()["ppo"]["unique_ratio"] == 0.4 and report.means()["ppo"]["cross_prompt_share"] == 0.7
    # A group of one prompt: estimates, no interval.
    assert all(math.isnan(iv.low) and iv.n == 1 for iv in report.by_group["g3"]["ppo"].values())


def test_compare_handles_the_new_metrics_and_groups():
    report = _report()
    d = compare(report, before="sft", after="ppo")
    assert list(d) == report.metrics
    # unique ratio: sft 9 strings of 10 ("a b" twice) -> 0.9; ppo 0.4: diff -0.5, ratio 0.4/0.9.
    assert (d["unique_ratio"].before, d["unique_ratio"].after) == pytest.approx((0.9, 0.4))
    assert d["unique_ratio"].diff.mean == pytest.approx(-0.5) and d["unique_ratio"].ratio == pytest.approx(4 / 9)
    # The paired jackknife leaves the same prompt out of both models.
    (b, lb), (a, la) = (report.corpus_statistic(m, "unique_ratio") for m in ("sft", "ppo"))
    assert d["unique_ratio"].diff == jackknife_interval(a - b, la - lb)
    # gold has negative values: a signed metric, no ratio; toxicity (>= 0) keeps its ratio: 0.1 / 0.4.
    assert math.isnan(d["gold"].ratio) and d["toxicity"].ratio == pytest.approx(0.25)
    assert d["cross_prompt_share"].before == pytest.approx(0.2)  # "a b" in p0 and p3
    # Per group: the same as comparing the group's own report.
    for g, idx in {"g1": [0, 1], "g2": [2, 3]}.items():
        sub = compare(_sub(report, idx), before="sft", after="ppo")
        mine = compare(report, before="sft", after="ppo", group=g)
        for k in report.metrics:
            assert mine[k].diff == pytest.approx(sub[k].diff, nan_ok=True)
            assert mine[k].before == sub[k].before and mine[k].after == sub[k].after
            if k == "gold":  # signed over the whole report, so no ratio in any group (g2 alone is >= 0)
                assert math.isnan(mine[k].ratio)
            else:
                assert mine[k].ratio == pytest.approx(sub[k].ratio, nan_ok=True)
    table = format_comparison(d, "sft", "ppo")
    assert "| unique_ratio | 0.900 | 0.400 | -0.500" in table and "| gold |" in table
    with pytest.raises(KeyError, match="no group 'g9'"):
        compare(report, group="g9")


def test_outputs_contain_the_diagnostics_and_the_groups(tmp_path):
    report = _report()
    md = report.to_markdown(str(tmp_path / "report.md"))
    assert "## Diversity and collapse" in md and "## By group" in md
    for k in COLLAPSE_METRICS[:4]:
        assert k in md
    rows = [line for line in md.splitlines() if line.startswith("| g1 | 2 | ppo |")]
    assert len(rows) == 2  # one per table (scores; diversity and collapse)
    # ppo on g1 is "x y" four times. distinct_1: 2 words of 8 = 0.25 (each prompt alone: 2/4, so
    # the jackknife SE is 0); unique 1/4 (alone 1/2, SE 0); shared across prompts 1.0 (alone: 0 and
    # 0, SE 0); entropy 0; both prompts' samples identical.
    assert rows[1] == ("| g1 | 2 | ppo | 0.250 ± 0.000 | 0.250 ± 0.000 | 1.000 ± 0.000 | 0.000 ± 0.000 "
                       "| 1.000 ± 0.000 |")
    # gold per-prompt means 2 and -1: mean 0.5, SE = std([2, -1]) / sqrt(2) = 1.5, 1.96 * 1.5 = 2.940.
    assert rows[0] == "| g1 | 2 | ppo | 0.500 ± 2.940 | 0.000 ± 0.000 |"
    assert "### g1" in md and "### g3" in md and "in bits" in md
    report.to_json(str(tmp_path / "eval.json"))
    d = json.loads((tmp_path / "eval.json").read_text())
    assert d["groups"] == report.groups
    assert d["by_group"]["g1"]["ppo"]["unique_ratio"]["mean"] == 0.25
    assert d["by_group"]["g3"]["ppo"]["unique_ratio"]["low"] is None  # NaN -> null
    back = EvaluationReport.from_json(str(tmp_path / "eval.json"))
    np.testing.assert_equal((back.by_group, back.summary), (report.by_group, report.summary))
    png = report.plot(str(tmp_path / "eval.png"))
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    plain = _report(groups=None)
    text = plain.to_markdown()
    assert "## By group" not in text and "## Diversity and collapse" in text and plain.by_group == {}
    assert plain.group_table() == "" and plain.group_examples() == ""
    plain.plot(str(tmp_path / "plain.png"))


def test_group_and_scorer_errors():
    prompts = ["p0", "p1"]
    assert resolve_groups(None, prompts) is None
    assert resolve_groups(lambda p: p[-1], prompts) == ["0", "1"]
    assert resolve_groups(("x", "y"), prompts) == ["x", "y"]
    with pytest.raises(ValueError, match="groups has 1 labels for 2 prompts"):
        resolve_groups(["x"], prompts)
    with pytest.raises(ValueError, match=r"the label of prompt 1 \('p1'\) is 3"):
        resolve_groups(["x", 3], prompts)
    with pytest.raises(ValueError, match=r"failed on prompt 0 \('p0'\): KeyError"):
        resolve_groups(lambda p: {}[p], prompts)
    with pytest.raises(TypeError, match="got a string"):
        resolve_groups("xy", prompts)
    with pytest.raises(ValueError, match=r"'on_topic' must return 0/1 or a probability.*1.5 at completions \[1\]"):
        check_probabilities("on_topic", np.array([0.0, 1.5, 1.0]))
    with pytest.raises(ValueError, match="1 group labels for 5 prompts"):
        _report(groups=["g"])
