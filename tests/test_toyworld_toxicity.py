"""Toy world: the toxicity classifier and build_world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_jax import toyworld as tw


@pytest.fixture(scope="module")
def classifier():
    return tw.train_toxicity_classifier(config=tw.ToxicityConfig(seed=0))


def test_classifier_reaches_high_held_out_accuracy(classifier):
    m = classifier.metrics
    assert m["held_out_accuracy"] > 0.9
    # Insult words it never saw in training are caught from their context most of the time.
    assert len(m["held_out_words"]) == 2
    assert not set(m["held_out_words"]) & set(classifier.vocab)
    assert m["held_out_word_accuracy"] > 0.8
    # Independent check on fresh data from another seed.
    texts, labels = tw.make_toxicity_data(600, seed=123)
    assert classifier.accuracy(texts, labels) > 0.9


def test_prob_toxic_is_higher_on_toxic_texts(classifier):
    rng = np.random.default_rng(5)
    prompts = tw.make_prompts(100, seed=5)
    toxic = [tw.sample_completion(p, "toxic", rng) for p in prompts]
    clean = [tw.sample_completion(p, "informative", rng) for p in prompts]
    pt, pc = classifier.prob_toxic(toxic), classifier.prob_toxic(clean)
    assert pt.shape == pc.shape == (100,)
    assert np.all((pt >= 0) & (pt <= 1))
    assert pt.mean() > 0.8 > 0.2 > pc.mean()
    assert np.mean(pt[:, None] > pc[None, :]) > 0.95  # AUC
    # Works on prompt + completion too, and ignores special tokens and unknown words.
    both = classifier.prob_toxic([f"{p.text} {c}" for p, c in zip(prompts, toxic, strict=True)])
    assert both.mean() > 0.8
    a, b = classifier.prob_toxic(["<s> what a stupid zebra </s> <pad>", "what a stupid"])
    assert a == pytest.approx(b)


def test_save_load_round_trip_and_determinism(classifier, tmp_path):
    path = tmp_path / "tox.json"
    classifier.save(path)
    json.loads(path.read_text())
    loaded = tw.ToxicityClassifier.load(path)
    texts, _ = tw.make_toxicity_data(50, seed=9)
    np.testing.assert_allclose(loaded.prob_toxic(texts), classifier.prob_toxic(texts))
    assert loaded.metrics["held_out_accuracy"] == classifier.metrics["held_out_accuracy"]
    again = tw.train_toxicity_classifier(config=tw.ToxicityConfig(seed=0))
    assert again.vocab == classifier.vocab
    np.testing.assert_array_equal(again.weights, classifier.weights)


def test_build_world_writes_and_reloads(tmp_path):
    config = tw.WorldConfig(
        seed=3,
        n_prompts=120,
        corpus=tw.CorpusConfig(n_examples=400, seed=3),
        toxicity=tw.ToxicityConfig(n_train=800, n_test=200, steps=100, seed=3),
    )
    world = tw.build_world(tmp_path / "w", config=config)
    names = {p.name for p in (tmp_path / "w").iterdir()}
    assert names == {"world_config.json", "prompts_train.jsonl", "prompts_held_out.jsonl",
                     "sft_corpus.jsonl", "tokenizer", "toxicity_classifier.json"}  # fmt: skip
    assert len(world.train_prompts) == 96 and len(world.held_out_prompts) == 24
    held = {p.prompt_id for p in world.held_out_prompts}
    assert not {ex.prompt_id for ex in world.corpus} & held  # SFT never sees held-out prompts
    row = json.loads(world.corpus_path.read_text().splitlines()[0])
    assert list(row) == ["prompt_id", "prompt", "completion", "kind"]
    loaded = tw.load_world(tmp_path / "w")
    assert loaded.config == config
    assert loaded.train_prompts == world.train_prompts
    assert loaded.held_out_prompts == world.held_out_prompts
    assert loaded.corpus == world.corpus
    assert loaded.tokenizer.get_vocab() == world.tokenizer.get_vocab()
    assert loaded.toxicity.vocab == world.toxicity.vocab
    # Same config, same world.
    again = tw.build_world(tmp_path / "w2", config=config)
    assert again.corpus == world.corpus
    assert again.tokenizer.get_vocab() == world.tokenizer.get_vocab()
    assert (tmp_path / "w2" / "sft_corpus.jsonl").read_bytes() == world.corpus_path.read_bytes()
    # Without the classifier.
    bare = tw.build_world(tmp_path / "w3", config=tw.WorldConfig(
        n_prompts=40, corpus=tw.CorpusConfig(n_examples=50), toxicity=None))  # fmt: skip
    assert bare.toxicity is None and bare.toxicity_path is None
    assert tw.load_world(tmp_path / "w3").toxicity is None
