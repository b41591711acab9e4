"""Toy world: the word-level tokenizer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rlhf_jax import toyworld as tw


@pytest.fixture(scope="module")
def tokenizer():
    # A deliberately tiny corpus: coverage must come from the phrase banks, not from luck.
    prompts = tw.make_prompts(8, seed=0)
    corpus = tw.make_sft_corpus(prompts, config=tw.CorpusConfig(n_examples=20, seed=0))
    return tw.train_tokenizer(f"{ex.prompt} {ex.completion}" for ex in corpus)


def test_special_tokens_and_vocab_size(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        tw.PAD, tw.BOS, tw.EOS, tw.UNK
    )
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.unk_token_id] == [0, 1, 2, 3]  # fmt: skip
    assert 300 <= len(tokenizer) <= 600
    # The special tokens are not split into "<", "/", "s", ">" pieces in the vocabulary.
    assert not {"<", "/", ">", "s"} & set(tokenizer.get_vocab())


def test_vocabulary_covers_every_generator(tokenizer):
    rng = np.random.default_rng(0)
    texts = [p.text for p in tw.all_prompts()]
    kinds = tw.COMPLETION_KINDS
    texts += [tw.sample_completion(p, k, rng) for p in tw.all_prompts() for k in kinds]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
    assert set(tw.world_words()) <= set(tokenizer.get_vocab())


def test_round_trip_and_eos(tokenizer):
    rng = np.random.default_rng(1)
    for p in tw.make_prompts(40, seed=2):
        completion = tw.sample_completion(p, "informative", rng)
        text = f"{p.text} {completion}"
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert ids.count(tokenizer.eos_token_id) == 1
        assert tokenizer.decode(ids) == f"{tw.BOS} {text}"
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.removesuffix(" " + tw.EOS)
        # Casing and spacing are normalised away (special tokens are matched as written).
        shouty = text.removesuffix(tw.EOS).upper().replace(" ,", ",") + tw.EOS
        assert tokenizer(shouty)["input_ids"] == ids
    assert tokenizer("what a zebra")["input_ids"][-1] == tokenizer.unk_token_id


def test_training_is_deterministic(tokenizer):
    prompts = tw.make_prompts(8, seed=0)
    corpus = tw.make_sft_corpus(prompts, config=tw.CorpusConfig(n_examples=20, seed=0))
    again = tw.train_tokenizer(f"{ex.prompt} {ex.completion}" for ex in corpus)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_saved_folder_loads_with_auto_tokenizer_offline(tokenizer, tmp_path):
    from transformers import AutoTokenizer  # imports torch when installed: keep it local

    folder = tw.save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = "this phone is light and easy to carry . </s>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (2, 0, 1)
    assert loaded.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text[:-5]


def test_toyworld_does_not_import_torch():
    code = (
        "import sys, rlhf_jax.toyworld as tw\n"
        "tok = tw.train_tokenizer(['a b </s>'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
