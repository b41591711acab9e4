"""Toy world: simulated labelers and their ranked-feedback records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_jax import toyworld as tw

# Roughly what an SFT model trained on the default corpus shows the labelers: mostly informative,
# often toxic, some filler and single hype, rarely something broken. Never repeated hype.
_SHOWN = ["informative"] * 45 + ["neutral"] * 15 + ["toxic"] * 25 + ["hype"] * 10 + ["broken"] * 5


def _shown(n_prompts: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts = tw.make_prompts(n_prompts, seed=seed)
    comps = [[tw.sample_completion(p, _SHOWN[rng.integers(len(_SHOWN))], rng) for _ in range(k)]
             for p in prompts]  # fmt: skip
    return prompts, comps


@pytest.fixture(scope="module")
def shown():
    return _shown(240, 4, seed=0)


def _records(shown, **kw):
    prompts, comps = shown
    kw.setdefault("n_labelers_per_prompt", 3)
    kw.setdefault("seed", 1)
    return tw.label_prompts([p.prompt_id for p in prompts], prompts, comps, **kw)


def test_records_have_the_exact_shape(shown):
    prompts, comps = shown
    records = _records(shown)
    assert len(records) == len(prompts)
    for rec, p, c in zip(records, prompts, comps, strict=True):
        assert list(rec) == ["prompt_id", "prompt", "completions", "criterion",
                             "instructions_id", "labels"]  # fmt: skip
        assert rec["prompt_id"] == p.prompt_id and rec["prompt"] == p.text
        assert rec["completions"] == c
        assert rec["criterion"] == "helpful and harmless"
        assert rec["instructions_id"] == "toyworld-v1"
        assert len(rec["labels"]) == 3
        assert len({lab["labeler"] for lab in rec["labels"]}) == 3
        for lab in rec["labels"]:
            assert list(lab) == ["labeler", "ranking", "flagged"]
            assert isinstance(lab["labeler"], str)
            assert all(type(i) is int for i in lab["flagged"])
            assert lab["flagged"] == sorted(set(lab["flagged"]))
            ranking = lab["ranking"]
            assert len(ranking) == len(c)
            ranked = [r for r in ranking if r is not None]
            assert all(type(r) is int for r in ranked)
            # Flagged <=> null rank.
            assert [i for i, r in enumerate(ranking) if r is None] == lab["flagged"]
            # Competition ranks: 1 is taken, and each rank r is held by the items after the
            # r - 1 strictly better ones (1, 2, 2, 4).
            if ranked:
                assert min(ranked) == 1
                for r in ranked:
                    assert r == 1 + sum(q < r for q in ranked)
    json.loads(json.dumps(records))  # plain JSON


def test_records_pass_the_feedback_validator(shown):
    from rlhf_jax.feedback import validate

    for rec in _records(shown):
        validate.parse_ranked(json.loads(json.dumps(rec)))


def test_labeling_is_seeded(shown):
    assert _records(shown) == _records(shown)
    assert _records(shown) != _records(shown, seed=2)


def test_flagging_ties_and_consensus(shown):
    prompts, comps = shown
    records = _records(shown)
    n_labels = sum(len(r["labels"]) for r in records)
    tied = sum(
        len([r for r in lab["ranking"] if r is not None])
        > len({r for r in lab["ranking"] if r is not None})
        for rec in records
        for lab in rec["labels"]
    )
    assert 0 < tied < 0.15 * n_labels  # ties allowed but rare
    # Broken completions are flagged (up to the small miss rate); well-formed ones never.
    should, did = 0, 0
    for rec, p in zip(records, prompts, strict=True):
        for i, c in enumerate(rec["completions"]):
            bad = tw.gold_details(p, c).flagged
            for lab in rec["labels"]:
                if bad:
                    should += 1
                    did += i in lab["flagged"]
                else:
                    assert i not in lab["flagged"]
    assert should > 20 and did / should > 0.85
    # The careful labelers put toxic completions below informative ones almost always.
    prefs = []
    for rec, p in zip(records, prompts, strict=True):
        tox = [i for i, c in enumerate(rec["completions"]) if tw.lexicon_toxicity(c)]
        good = [i for i, c in enumerate(rec["completions"]) if not tw.lexicon_toxicity(c)
                and not tw.gold_details(p, c).flagged and tw.gold_details(p, c).on_topic >= 1]
        for lab in rec["labels"]:
            if lab["labeler"] != "labeler-4":
                prefs += [lab["ranking"][g] < lab["ranking"][t] for g in good for t in tox]
    assert len(prefs) > 100 and np.mean(prefs) > 0.97


def test_misreading_labeler_agrees_with_gold_less(shown):
    agreement = tw.agreement_with_gold(_records(shown, misreader="length"))
    careful = [a for name, a in agreement.items() if name != "labeler-4"]
    assert min(careful) > 0.9
    assert agreement["labeler-4"] < min(careful) - 0.05
    # Without a misreader, labeler-4 is as good as the others.
    assert tw.agreement_with_gold(_records(shown, misreader=None))["labeler-4"] > 0.9


def test_hype_misreader_prefers_hype(shown):
    prompts, comps = shown
    records = _records(shown, misreader="hype", config=tw.LabelerConfig(misread_prob=1.0))
    wins = {"labeler-4": [], "careful": []}
    for rec, p in zip(records, prompts, strict=True):
        hype = [i for i, c in enumerate(rec["completions"]) if tw.hype_count(c) == 1]
        info = [i for i, c in enumerate(rec["completions"])
                if tw.hype_count(c) == 0 and not tw.lexicon_toxicity(c)
                and not tw.gold_details(p, c).flagged and tw.gold_details(p, c).on_topic >= 1]
        for lab in rec["labels"]:
            key = "labeler-4" if lab["labeler"] == "labeler-4" else "careful"
            wins[key] += [lab["ranking"][h] < lab["ranking"][i] for h in hype for i in info]
    assert len(wins["labeler-4"]) > 10
    assert np.mean(wins["labeler-4"]) > 0.9 > 0.5 > np.mean(wins["careful"])


def test_label_prompts_checks_its_arguments(shown):
    prompts, comps = shown
    with pytest.raises(ValueError):
        tw.label_prompts(["a"], prompts[:2], comps[:2], seed=0)
    with pytest.raises(ValueError):
        tw.label_prompts(["a"], prompts[:1], comps[:1], n_labelers_per_prompt=6, seed=0)
    # Prompts may be given as text; an all-flagged prompt has no ranks at all.
    rec = tw.label_prompts(["x"], [prompts[0].text], [["</s>", "the the the . </s>"]], seed=0,
                           config=tw.LabelerConfig(flag_miss_prob=0.0))[0]  # fmt: skip
    assert all(lab["ranking"] == [None, None] and lab["flagged"] == [0, 1] for lab in rec["labels"])
