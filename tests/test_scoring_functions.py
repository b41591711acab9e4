"""Verifiable rewards (rlhf_jax.scoring.functions): hand-worked values, clear errors, composition
with WeightedScorer, and the Hugging Face classifier against the torch model itself."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlhf_jax.scoring import (ClippedScorer, Completions, FunctionScorer, WeightedScorer, exact_match, length_target,
                              normalize_answer, overlong_penalty, regex_match, torch_classifier)


def test_exact_match_whole_completion_and_extracted():
    answers = {"2+2?": "4", "capital of France?": "Paris"}
    fn = exact_match(answers)
    # " paris. " normalises to "paris" = "Paris" case-folded; "4 apples" != "4"
    assert fn(["capital of France?", "2+2?", "2+2?"], [" paris. ", "4 apples", "4"]) == [1.0, 0.0, 1.0]
    assert exact_match(answers, case=True)(["capital of France?"], ["paris"]) == [0.0]
    # the LAST match of the pattern, group 1: "answer: 5 ... answer: 4" -> "4"
    fn = exact_match(answers, pattern=r"answer:\s*(\S+)")
    assert fn(["2+2?", "2+2?", "2+2?"], ["answer: 5, no wait, answer: 4", "it is 4", "answer: 5"]) == [1.0, 0.0, 0.0]
    # a callable gives the answer
    assert exact_match(lambda p: str(eval(p.rstrip("?"))))(["3*3?"], ["9"]) == [1.0]
    assert fn.__name__ == "exact_match" and normalize_answer("  A \t B. ") == "a b"


def test_exact_match_errors_name_the_prompt():
    with pytest.raises(KeyError, match="no reference answer for prompt 'who\\?'"):
        exact_match({"2+2?": "4"})(["who?"], ["me"])
    with pytest.raises(TypeError, match="answer_of"):
        exact_match({"2+2?": "4"})([[{"role": "user", "content": "hi"}]], ["me"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        exact_match({"a": "b"})(["a", "a"], ["b"])


def test_regex_match():
    fmt = regex_match(r"<answer>.*</answer>", name="format")
    assert fmt(["p"] * 3, ["so <answer>4</answer>", "<answer>4", ""]) == [1.0, 0.0, 0.0]
    strict = regex_match(r"<think>.*</think>\s*<answer>.*</answer>", full=True, flags=re.S, reward=0.5)
    assert strict(["p"] * 2, [" <think>a\nb</think> <answer>4</answer>\n", "x <think></think><answer></answer>"]) \
        == [0.5, 0.0]
    assert fmt.__name__ == "format"


def test_length_target_and_overlong_penalty():
    # target 10 words, tolerance 2: 8..12 words score 0; 15 words: -(5 - 2) / 10 = -0.3; 4 words: -(6 - 2)/10
    fn = length_target(10, tolerance=2)
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    np.testing.assert_allclose(fn(["p"] * 5, [words(8), words(12), words(15), words(4), ""]),
                               [0, 0, -0.3, -0.4, -0.8])
    # characters, scale 4: "abcdef" is 6 chars, target 3: -(3 - 0)/4
    assert length_target(3, unit="chars", scale=4)(["p"], ["abcdef"]) == [-0.75]
    # DAPO: max 10, buffer 4: free up to 6; 8 words -> (6 - 8)/4 = -0.5; 10 -> -1; 20 -> -1
    fn = overlong_penalty(10, buffer=4)
    assert fn(["p"] * 4, [words(6), words(8), words(10), words(20)]) == [0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="unit"):
        length_target(3, unit="tokens")
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(4, buffer=5)


def test_functions_compose_with_weights():
    answers = {"q": "yes"}
    scorer = WeightedScorer([(FunctionScorer(exact_match(answers)), 1.0),
                             (FunctionScorer(length_target(1, tolerance=0)), 0.5)])
    c = Completions(["q", "q"], ["yes", "no no no"], None, None)
    total, parts = scorer.score_and_parts(c, None)
    # row 0: 1 + 0.5 * 0;  row 1: 0 + 0.5 * -(3 - 1)/1 = -1
    np.testing.assert_allclose(total, [1.0, -1.0])
    assert set(parts) == {"exact_match", "length_target"}


def test_clipped_scorer_caps_scores_and_logs_the_unclipped_ones():
    values = {"a": -2.0, "b": 0.3, "c": 1.5, "d": float("nan")}
    inner = FunctionScorer(lambda ps, cs: [values[c] for c in cs], name="rm")
    c = Completions(["p"] * 4, ["a", "b", "c", "d"], None, None)
    score, parts = ClippedScorer(inner, high=1.0).score_and_parts(c, None)
    # only 1.5 is above the cap; NaN stays NaN for the drivers' non-finite policy
    np.testing.assert_array_equal(score, np.array([-2.0, 0.3, 1.0, np.nan], np.float32))
    np.testing.assert_array_equal(parts["unclipped"], np.array([-2.0, 0.3, 1.5, np.nan], np.float32))
    np.testing.assert_array_equal(parts["clipped"], [0.0, 0.0, 1.0, 0.0])
    both = ClippedScorer(inner, low=-1.0, high=1.0)
    np.testing.assert_array_equal(both(c, None)[:3], np.array([-1.0, 0.3, 1.0], np.float32))
    assert both.name == "rm" and ClippedScorer(inner, high=0.0, name="capped").name == "capped"
    with pytest.raises(ValueError, match="give low, high or both"):
        ClippedScorer(inner)
    with pytest.raises(ValueError, match="low must be below high"):
        ClippedScorer(inner, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="high must be finite"):
        ClippedScorer(inner, high=float("inf"))


def test_torch_classifier_is_the_torch_logit(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.trainer_fixtures import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, num_labels=2, pad_token_id=0,
                      id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model = LlamaForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fn = torch_classifier(str(tmp_path), label="pos", batch_size=2)
    prompts, comps = ["w1 w2 ", "w3 "], ["w4 w5 w6", "w7"]
    got = fn(prompts, comps)
    with torch.no_grad():
        want = [model(**tok([p + c], return_tensors="pt")).logits[0, 1].item() for p, c in zip(prompts, comps)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert fn.__name__ == "classifier:1"
    with pytest.raises(ValueError, match="no label 'toxic'"):
        torch_classifier(str(tmp_path), label="toxic")
