"""Synthetic negatives: corrupted copies of preferred completions ranked below them."""

from __future__ import annotations

import collections

import datasets
import numpy as np
import pytest

from rlhf_jax.feedback import NegativesConfig, corrupted_negatives, corrupt, feedback_to_pairs
from rlhf_jax.feedback.records import Label, RankedFeedback

TEXT = "the room was quiet and the bed was soft . </s>"


def test_shuffle_keeps_the_words_and_the_end_marker_but_not_their_order():
    for seed in range(20):
        out = corrupt(TEXT, "shuffle", np.random.default_rng(seed), end="</s>")
        assert out.endswith(" </s>") and out != TEXT
        assert collections.Counter(out.split()) == collections.Counter(TEXT.split())
    # two words can only swap
    assert corrupt("hello world", "shuffle", np.random.default_rng(0)) == "world hello"


def test_splice_is_a_prefix_of_the_text_then_a_suffix_of_the_other():
    other = "a dog is a loyal friend . </s>"
    for seed in range(20):
        out = corrupt(TEXT, "splice", np.random.default_rng(seed), other=other, end="</s>").split()
        words, donor = TEXT.split()[:-1], other.split()[:-1]
        assert out[-1] == "</s>"
        body = out[:-1]
        cut = next(k for k in range(1, len(words)) if body[k:] == donor[len(donor) - len(body) + k:])
        assert body[:cut] == words[:cut] and 1 <= cut < len(words)


def test_repeat_says_one_span_of_up_to_four_words_twice():
    for seed in range(20):
        out = corrupt(TEXT, "repeat", np.random.default_rng(seed), end="</s>").split()
        words = TEXT.split()
        extra = len(out) - len(words)
        assert 1 <= extra <= 4 and out[-1] == "</s>"
        # removing one copy of the doubled span gives the text back
        assert any(out[j:j + extra] == out[j + extra:j + 2 * extra] and out[:j] + out[j + extra:] == words
                   for j in range(len(out) - 2 * extra + 1))


def test_a_one_word_completion_is_left_unchanged():
    assert corrupt("fine </s>", "shuffle", np.random.default_rng(0), end="</s>") == "fine </s>"
    assert corrupt("fine", "repeat", np.random.default_rng(0)) == "fine"


def _pairs():
    def rec(pid, prompt, completions):
        return RankedFeedback(prompt_id=pid, prompt=prompt, completions=completions, criterion="helpful",
                              instructions_id="v1",
                              labels=(Label(labeler="a", ranking=tuple(range(1, len(completions) + 1)), flagged=()),))

    pairs, _ = feedback_to_pairs([rec("h1", "the hotel room was", (TEXT, "ok </s>", "you idiot . </s>")),
                                  rec("d1", "my dog is", ("a loyal friend . </s>", "bad . </s>"))])
    return pairs


def test_every_distinct_preferred_completion_gets_one_corrupted_copy_ranked_below():
    pairs = _pairs()
    assert len(pairs) == 4  # 3 + 1; preferred: TEXT, "ok </s>" (h1), "a loyal friend . </s>" (d1)
    out, report = corrupted_negatives(pairs, NegativesConfig(end="</s>", seed=3))
    assert report.completions == 3
    # "ok </s>" has one word before the end marker: too short, counted
    assert report.unchanged == 1 and report.pairs == 2 and len(out) == 2
    assert sum(report.by_kind.values()) == 2
    assert out.features == pairs.features
    for row in out:
        assert row["chosen"] in (TEXT, "a loyal friend . </s>")
        assert row["rejected"] != row["chosen"] and row["rejected"].endswith("</s>")
        assert row["agreement"] == 1.0 and row["margin"] is None
        assert row["prompt"] == {"h1": "the hotel room was", "d1": "my dog is"}[row["prompt_id"]]
    assert "2 corrupted-negative pairs from 3 preferred completions" in report.summary()


def test_nothing_to_corrupt_gives_an_empty_dataset_with_the_same_columns():
    pairs = _pairs().filter(lambda r: r["chosen"] == "ok </s>")  # one word: nothing to corrupt
    assert len(pairs) == 1
    out, report = corrupted_negatives(pairs, NegativesConfig(end="</s>"))
    assert len(out) == 0 and out.features == pairs.features
    assert (report.completions, report.pairs, report.unchanged) == (1, 0, 1)


def test_fraction_draws_about_that_share_and_is_seeded():
    rows = [{"prompt_id": f"p{i}", "prompt": f"prompt {i}", "chosen": f"good answer number {i} .",
             "rejected": "bad .", "agreement": 1.0, "margin": 1.0} for i in range(400)]
    out, report = corrupted_negatives(rows, NegativesConfig(fraction=0.25, kinds=("shuffle",), seed=1))
    assert report.completions == 400 and 70 <= report.pairs <= 130 and report.by_kind == {"shuffle": report.pairs}
    again, _ = corrupted_negatives(rows, NegativesConfig(fraction=0.25, kinds=("shuffle",), seed=1))
    assert again.to_list() == out.to_list()


def test_conversational_pairs_corrupt_the_assistant_message():
    rows = [{"prompt": [{"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": "hello there my friend"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    out, report = corrupted_negatives(datasets.Dataset.from_list(rows), NegativesConfig(kinds=("repeat",)))
    assert report.pairs == 1
    new = out[0]
    assert new["prompt"] == rows[0]["prompt"] and new["chosen"] == rows[0]["chosen"]
    assert new["rejected"][0]["role"] == "assistant" and len(new["rejected"][0]["content"].split()) > 4


@pytest.mark.parametrize("field, value, words", [("kinds", ("scramble",), "kinds"), ("kinds", (), "kinds"),
                                                 ("fraction", 0.0, "fraction"), ("fraction", 1.5, "fraction")])
def test_bad_settings_are_refused_with_the_field_named(field, value, words):
    with pytest.raises(ValueError, match=words):
        NegativesConfig(**{field: value})
