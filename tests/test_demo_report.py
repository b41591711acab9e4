"""The demo report on a synthetic evaluation: claims a run is too small to show are "not checked at
this size", the miniature says so in its header, the per-family section (main metrics, collapse
diagnostics, paired differences, examples) appears exactly when the evaluation has groups, the
collapse claims tell a collapsed policy from a diverse one, and the monitor claim reads the PPO
logs as worked out by hand."""

import dataclasses
import json
import types

import numpy as np
import pytest

from rlhf_jax import toyworld as tw
from rlhf_jax.demo.config import DemoConfig
from rlhf_jax.demo.claims import monitor_timing
from rlhf_jax.demo.report import (MIN_EVAL_PROMPTS, MIN_HACKING_STEPS, MIN_PPO_STEPS, NOT_CHECKED, claims,
                                  family_section, header, write_report)
from rlhf_jax.evaluate import EvaluationReport, collapse_metrics

COLLAPSED = "light and easy to carry . </s>"
S = 2


def _report(n_prompts: int, *, groups: bool = True, collapsed: bool = True) -> EvaluationReport:
    """sft answers every prompt with informative, varied text; ppo answers everything with one
    product clause (the collapse of issue #18), or with ``collapsed=False`` with informative
    varied text like sft; ppo_no_kl with chained hype."""
    rng = np.random.default_rng(0)
    prompts = tw.make_prompts(n_prompts, seed=0)
    completions = {
        "sft": [[tw.sample_completion(p, "informative", rng) for _ in range(S)] for p in prompts],
        "ppo": [[COLLAPSED] * S if collapsed else [tw.sample_completion(p, "informative", rng) for _ in range(S)]
                for p in prompts],
        "ppo_no_kl": [[tw.sample_completion(p, "hype_repeated", rng) for _ in range(S)] for p in prompts],
    }
    # Designed so that every claim of the first seven holds except "gold goes up" (ppo's gold is
    # below sft's) when collapsed; not collapsed, ppo's gold is above sft's.
    means = {"sft": dict(reward=0.0, toxicity=0.3, gold=2.0, toxic_rate=0.3, hype=0.1, repetition=0.05, kl=0.0),
             "ppo": dict(reward=1.0, toxicity=0.05, gold=1.0 if collapsed else 2.5, toxic_rate=0.1, hype=0.1,
                         repetition=0.05, kl=2.0),
             "ppo_no_kl": dict(reward=3.0, toxicity=0.05, gold=-1.0, toxic_rate=0.0, hype=4.0, repetition=0.4,
                               kl=9.0)}
    values = {}
    for m, d in means.items():
        values[m] = {k: np.full((n_prompts, S), v) + 0.01 * rng.normal(size=(n_prompts, S)) for k, v in d.items()}
        texts = [c for row in completions[m] for c in row]
        values[m]["on_topic"] = np.reshape(tw.on_topic_scores([p for p in prompts for _ in range(S)], texts),
                                           (n_prompts, S))
        values[m]["length"] = np.array([[len(c.split()) for c in row] for row in completions[m]], float)
    metrics = [*means["sft"], "on_topic", "length", "distinct_1", "distinct_2",
               *collapse_metrics(samples_per_prompt=S, greedy=False)]
    return EvaluationReport(models=list(means), metrics=metrics, prompts=[p.text for p in prompts], values=values,
                            completions=completions, settings={"special_tokens": ["</s>"]},
                            groups=[p.family for p in prompts] if groups else None)


def _hist(n, score, gap=None):
    """PPO logs of ``n`` steps; with ``gap``, the monitor logged at that constant value and the
    gold score with it."""
    return [{"step": i, "score": score, **({} if gap is None else {"overopt_gap": gap, "gold": 0.0})}
            for i in range(n)]


FIRST_7 = ["PASS", "PASS", "FAIL", "PASS", "PASS", "PASS", "PASS"]


@pytest.fixture(scope="module")
def big():
    return _report(MIN_EVAL_PROMPTS + 20)


@pytest.fixture(scope="module")
def small():
    return _report(16)


def test_claims_of_a_full_size_run_are_checked(big):
    checked = claims(big, _hist(MIN_PPO_STEPS, 1.0, gap=0.0), _hist(MIN_HACKING_STEPS, 3.0, gap=0.0))
    assert len(checked) == 11 and all(c.checked and c.shortfall() == "" for c in checked)
    # the collapsed ppo: one string for every prompt, off topic outside products, gold down
    assert [c.result for c in checked] == FIRST_7 + ["FAIL", "FAIL", "FAIL", "FAIL"]
    m = big.means()
    assert checked[0].measured.startswith(f"{m['sft']['toxic_rate']:.3f} -> {m['ppo']['toxic_rate']:.3f} (x0.3")
    assert checked[7].measured.startswith(f"{m['sft']['unique_ratio']:.3f} -> {1 / 240:.3f} (x")  # 1 string in 2 x 120
    assert "animals 1.00 -> 0.00" in checked[8].measured and "product 1.00 -> 1.00" in checked[8].measured
    # a constant gap (0) and gold: no correlation to show, the KL and no-KL gaps both 0 -> FAIL
    assert "monitor" in checked[10].claim and "correlation +nan, last 5 steps 0.00" in checked[10].measured


def test_collapse_claims_pass_for_a_diverse_on_topic_policy():
    report = _report(MIN_EVAL_PROMPTS + 20, collapsed=False)
    checked = claims(report, _hist(MIN_PPO_STEPS, 1.0), _hist(MIN_HACKING_STEPS, 3.0))
    assert [c.result for c in checked[7:10]] == ["PASS", "PASS", "PASS"]
    for family in tw.FAMILIES:  # every family's paired gold difference, with its interval
        assert f"{family} +0.50 [" in checked[9].measured
    # without a monitor the monitor claim is not checked, and says why
    assert checked[10].result == NOT_CHECKED and "needs >= 1 over-optimisation monitor (this run: 0)" in \
        checked[10].shortfall()


def test_monitor_timing_by_hand():
    # no-KL run, 5-step trailing means (fewer steps at the start): the gap [0 x 6, 1 x 6] gives
    # [0 x 6, .2, .4, .6, .8, 1, 1], reaching 0.5 at step 8; gold [0 x 5, -1, -1, -2, -2, -3 x 3]
    # gives [0 x 5, -.2, -.4, -.8, -1.2, -1.8, -2.2, -2.6], 1 below its start (0) at step 8
    gap = [0.0] * 6 + [1.0] * 6
    gold = [0.0] * 5 + [-1.0, -1.0, -2.0, -2.0, -3.0, -3.0, -3.0]
    gap_means = [0.0] * 6 + [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    gold_means = [0.0] * 5 + [-0.2, -0.4, -0.8, -1.2, -1.8, -2.2, -2.6]
    hack = [{"step": i, "overopt_gap": g, "gold": v, "score": 1.0} for i, (g, v) in enumerate(zip(gap, gold))]
    kl = [{"step": i, "overopt_gap": 0.1, "gold": 0.0, "score": 1.0} for i in range(12)]
    t = monitor_timing(kl, hack, 0.5)
    x, y = np.array(gap_means) - np.mean(gap_means), np.array(gold_means) - np.mean(gold_means)
    assert t.correlation == pytest.approx(float(x @ y / np.sqrt((x @ x) * (y @ y))))
    assert t.correlation < -0.9 and (t.gap_step, t.gold_step) == (8, 8) and t.kl_max_gap == pytest.approx(0.1)
    # the gap rose as the gold fell, ended at 1.0 >= 0.5 (no KL) while the KL run's stayed at 0.1
    assert t.late_gap == pytest.approx((0.1, 1.0)) and t.ok(0.5) and t.warned_first()
    # a gap one step late (from step 7 on) reaches 0.6 at step 9, after the gold fell: still the
    # claim (it rises as the gold falls), but the stop rule would not have warned first
    late = monitor_timing(kl, [dict(r, overopt_gap=float(i >= 7)) for i, r in enumerate(hack)], 0.5)
    assert late.gap_step == 9 and late.ok(0.5) and not late.warned_first()
    # the KL run's gap reaching the threshold fails it; so does a flat or a falling no-KL gap
    assert not monitor_timing([dict(r, overopt_gap=0.6) for r in kl], hack, 0.5).ok(0.5)
    flat = monitor_timing(kl, [dict(r, overopt_gap=0.6) for r in hack], 0.5)
    assert np.isnan(flat.correlation) and not flat.ok(0.5)
    assert not monitor_timing(kl, [dict(r, overopt_gap=1.0 - g) for r, g in zip(hack, gap)], 0.5).ok(0.5)


def test_claims_of_the_miniature_are_not_checked(small):
    checked = claims(small, _hist(3, 1.0), _hist(3, 3.0))
    assert all(c.result == NOT_CHECKED for c in checked)
    assert [c.ok for c in checked] == [True, True, False, True, True, True, True] + [False] * 4  # still measured
    assert checked[0].shortfall() == ("needs >= 100 held-out prompts (this run: 16); "
                                      "needs >= 20 PPO steps (this run: 3)")
    assert "needs >= 60 no-KL PPO steps (this run: 3)" in checked[-1].shortfall()


def test_each_claim_needs_its_own_sizes(big):
    # Big evaluation, KL run long enough, no-KL run of 30 steps: enough for the KL claim (20),
    # not for the hacking claims (60).
    checked = claims(big, _hist(MIN_PPO_STEPS, 1.0, gap=0.0), _hist(30, 3.0, gap=0.0))
    assert [c.checked for c in checked] == [True] * 5 + [False] * 2 + [True] * 3 + [False]


def test_header_says_the_miniature_is_the_miniature(small, big):
    mini = "\n".join(header(DemoConfig.quick(), "runs/q", claims(small, _hist(3, 1.0), _hist(3, 3.0)), 60.0))
    assert "(miniature)" in mini.splitlines()[0] and "**This is the miniature (`--quick`)**" in mini
    assert "16 held-out prompts x 2 samples" in mini and "`rlhf-jax demo --quick --out runs/q`" in mini
    full = "\n".join(header(DemoConfig(), "runs/d", claims(big, _hist(60, 1.0, 0.0), _hist(120, 3.0, 0.0)), 600.0))
    assert "miniature" not in full and NOT_CHECKED not in full and "`rlhf-jax demo --out runs/d`" in full
    part = "\n".join(header(DemoConfig(), "runs/d", claims(big, _hist(60, 1.0, 0.0), _hist(30, 3.0, 0.0)), 600.0))
    assert f"3 of 11 claims need a bigger run than this one and are marked *{NOT_CHECKED}*" in part
    # the flags that add GRPO / DPO runs are named; other step counts are a custom configuration
    q = DemoConfig.quick()
    few = claims(small, _hist(3, 1.0), _hist(3, 3.0))
    both = dataclasses.replace(q, grpo_steps=q.ppo_steps, dpo_steps=q.reward_steps)
    assert "`rlhf-jax demo --quick --grpo --dpo --out runs/q`" in "\n".join(header(both, "runs/q", few, 60.0))
    dpo = dataclasses.replace(DemoConfig(), dpo_steps=DemoConfig().reward_steps)
    assert "`rlhf-jax demo --dpo --out runs/d`" in "\n".join(header(dpo, "runs/d", few, 60.0))
    odd = "\n".join(header(dataclasses.replace(q, dpo_steps=1), "runs/q", few, 60.0))
    assert "with a custom configuration" in odd and "(miniature)" not in odd


def test_family_section(big):
    text = "\n".join(family_section(big))
    for part in ("## By prompt family", "### Main metrics", "### Diversity and collapse", "### sft -> ppo per family",
                 "### Examples per family", "#### animals", "#### product", "unique_ratio", "on_topic"):
        assert part in text
    # The collapse shows per family: ppo is on topic for products only.
    assert big.means("product")["ppo"]["on_topic"] == 1.0 and big.means("animals")["ppo"]["on_topic"] == 0.0
    assert big.means("animals")["sft"]["on_topic"] == 1.0  # informative answers are on topic
    diff_rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
                 if line.startswith("| ") and " [" in line and "|---" not in line and line.count("|") == 13}
    assert set(diff_rows) == set(tw.FAMILIES)
    # on_topic column (3rd metric: reward, gold, on_topic): animals -1, product +0.
    assert diff_rows["animals"].split(" | ")[3].startswith("-1.000")
    assert diff_rows["product"].split(" | ")[3].startswith("+0.000")
    assert COLLAPSED.replace("<", "&lt;") in text
    plain = family_section(_report(16, groups=False))
    assert plain[2].startswith("This evaluation has no prompt groups") and len(plain) == 4


def _fakes(report):
    row = types.SimpleNamespace(labeler="labeler-0", agreement=0.8)
    res = types.SimpleNamespace(eval={"eval_accuracy": 0.7, "eval_loss": 0.5, "train_accuracy": 0.75,
                                      "train_loss": 0.45}, best_step=10, history=[{}] * 14)
    rm = types.SimpleNamespace(gain=1.0, bias=0.0)
    return dict(
        stages=types.SimpleNamespace(durations={"world": 1.0, "sft": 2.0}),
        sft=types.SimpleNamespace(history=[{"loss": 3.0}, {"loss": 1.0}], eval={"eval_perplexity": 2.5}),
        stats=types.SimpleNamespace(table=types.SimpleNamespace(rows=[row]), format=lambda: "stats"),
        pairs_report=None, validation=types.SimpleNamespace(summary=lambda: "ok"),
        rewards=types.SimpleNamespace(
            main=res, optimised=[rm], held_out=[rm],
            results=[res, types.SimpleNamespace(eval={"eval_accuracy": 0.6, "eval_loss": 0.7}, best_step=None,
                                                history=[{}] * 20)]),
        ppo=types.SimpleNamespace(history=_hist(3, 1.0)), hack=types.SimpleNamespace(history=_hist(3, 3.0)),
        report=report)


@pytest.mark.parametrize("groups", [True, False])
def test_write_report(tmp_path, groups):
    report = _report(16, groups=groups)
    summary = write_report(str(tmp_path), cfg=DemoConfig.quick(), **_fakes(report))
    text = (tmp_path / "report.md").read_text()
    assert text.count(f"| {NOT_CHECKED} |") == 11 and "| FAIL |" not in text and "(miniature)" in text
    # the reward models' table: train vs held-out accuracy, where each stopped, its role
    assert "| 0 | optimised | 0 | 10 (best of 14) | 0.750 | 0.700 | 0.450 | 0.500 | 1.0000 | 0.0000 |" in text
    assert "| 1 | held out (monitor) | 1 | 20 | nan | 0.600 |" in text
    assert ("#### animals" in text) == groups and "## By prompt family" in text
    assert "| cross_prompt_share |" in text  # in the paired comparisons
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["miniature"] is True and summary["sizes"]["held-out prompts"] == 16
    assert [c["result"] for c in on_disk["claims"]] == [NOT_CHECKED] * 11
    assert [r["role"] for r in on_disk["reward_models"]] == ["optimised", "held_out"]
    assert all(isinstance(c["pass"], bool) for c in on_disk["claims"])
    assert set(on_disk["evaluation_by_family"]) == (set(report.group_names) if groups else set())
