"""Tokenised batches for the reward trainer, with a tiny word-level tokenizer built here."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_jax import feedback as fb

SENTENCES = ["my house is too hot", "open the windows at night", "there is nothing you can do",
             "a dog is a furry animal", "green purple the", "question answer sure sorry"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def _core():
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    return tok


@pytest.fixture(scope="module")
def tokenizer():
    return PreTrainedTokenizerFast(tokenizer_object=_core(), pad_token="[PAD]",
                                   unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


def ids(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(text.split())


def last_index_from_mask(mask):
    """Independent reference: the model's rule (last 1 in the mask), in numpy."""
    t = mask.shape[-1]
    return t - 1 - np.argmax(np.flip(mask > 0, axis=-1), axis=-1)


def test_left_padding_default(tokenizer):
    cfg = fb.BatchConfig(max_length=10)
    batch, report = fb.encode_sequences(tokenizer, ["my house is too hot", "a dog is"],
                                        [" open the windows", " a furry animal"], config=cfg)
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 10)
    assert batch.input_ids.dtype == batch.attention_mask.dtype == np.int32
    assert batch.last_token_index.dtype == np.int32 and batch.last_token_index.shape == (2,)
    # No post-processor adds a bos, so add_bos=None adds none: 5 + 3 and 3 + 3 tokens.
    np.testing.assert_array_equal(batch.attention_mask.sum(1), [8, 6])
    np.testing.assert_array_equal(batch.last_token_index, [9, 9])
    np.testing.assert_array_equal(batch.last_token_index, last_index_from_mask(batch.attention_mask))
    assert batch.input_ids[1, 4:].tolist() == ids(tokenizer, "a dog is a furry animal")
    assert batch.input_ids[1, :4].tolist() == [tokenizer.pad_token_id] * 4
    assert batch.attention_mask[1].tolist() == [0] * 4 + [1] * 6
    assert report.kept_indices == (0, 1) and report.skipped == 0


def test_right_padding_bos_eos_and_longest(tokenizer):
    cfg = fb.BatchConfig(max_length=12, padding_side="right", add_bos=True, append_eos=True,
                         pad_to_max_length=False)
    batch, _ = fb.encode_sequences(tokenizer, ["a dog is", "my house is too hot"],
                                   [" green", " open the windows"], config=cfg)
    # bos + 3 + 1 + eos = 6 and bos + 5 + 3 + eos = 10; padded to the longest (10).
    assert batch.input_ids.shape == (2, 10)
    np.testing.assert_array_equal(batch.last_token_index, [5, 9])
    np.testing.assert_array_equal(batch.last_token_index, last_index_from_mask(batch.attention_mask))
    row = batch.input_ids[0].tolist()
    assert row[:6] == [tokenizer.bos_token_id, *ids(tokenizer, "a dog is green"),
                       tokenizer.eos_token_id]
    assert row[6:] == [tokenizer.pad_token_id] * 4


def test_add_bos_follows_the_tokenizer_by_default():
    core = _core()
    bos = core.token_to_id("[BOS]")
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                        special_tokens=[("[BOS]", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]")
    batch, _ = fb.encode_sequences(tok, ["a dog is"], [" green"], config=fb.BatchConfig(
        max_length=6, padding_side="right"))
    assert batch.input_ids[0, :5].tolist() == [bos, *ids(tok, "a dog is green")]
    off, _ = fb.encode_sequences(tok, ["a dog is"], [" green"], config=fb.BatchConfig(
        max_length=6, padding_side="right", add_bos=False))
    assert off.input_ids[0, 0] != bos


def test_overflow_truncate_left_keeps_completion_and_bos(tokenizer):
    cfg = fb.BatchConfig(max_length=6, add_bos=True)
    batch, report = fb.encode_sequences(
        tokenizer, ["there is nothing you can do", "a dog"], [" open the windows", " green"],
        config=cfg)
    # 1 bos + 3 completion tokens leave room for 2 prompt tokens: "can do".
    assert batch.input_ids[0].tolist() == [tokenizer.bos_token_id,
                                           *ids(tokenizer, "can do open the windows")]
    assert report.prompts_truncated == 1 and report.kept == 2 and report.skipped == 0


def test_overflow_skip_and_completion_too_long_are_counted(tokenizer):
    prompts = ["there is nothing you can do", "a dog", "a dog"]
    completions = [" open the windows", " green", " a furry animal is a dog"]
    cfg = fb.BatchConfig(max_length=5, overflow="skip")
    batch, report = fb.encode_sequences(tokenizer, prompts, completions, config=cfg)
    assert report.kept_indices == (1,) and batch.input_ids.shape == (1, 5)
    assert (report.skipped_prompt_overflow, report.skipped_completion_too_long) == (1, 1)
    assert report.items == report.kept + report.skipped == 3
    # A completion longer than the context is skipped under truncate_left too (never cut).
    _, report = fb.encode_sequences(tokenizer, prompts, completions,
                                    config=fb.BatchConfig(max_length=5))
    assert report.kept_indices == (0, 1) and report.skipped_completion_too_long == 1
    assert report.prompts_truncated == 1


def test_empty_batch_and_empty_sequence(tokenizer):
    batch, report = fb.encode_sequences(tokenizer, [""], [""], config=fb.BatchConfig(max_length=4))
    assert batch.input_ids.shape == (0, 4) and report.skipped_empty == 1


def test_no_pad_token_is_an_error_unless_eos_fallback():
    tok = PreTrainedTokenizerFast(tokenizer_object=_core(), unk_token="[UNK]", eos_token="[EOS]")
    assert tok.pad_token_id is None
    with pytest.raises(ValueError, match="no pad token.*pad_with_eos=True"):
        fb.encode_sequences(tok, ["a dog"], [" green"], config=fb.BatchConfig(max_length=4))
    batch, _ = fb.encode_sequences(tok, ["a dog"], [" green"],
                                   config=fb.BatchConfig(max_length=5, pad_with_eos=True))
    assert batch.input_ids[0, :2].tolist() == [tok.eos_token_id] * 2
    assert batch.attention_mask[0].tolist() == [0, 0, 1, 1, 1]


def test_pair_batch_from_dataset(tokenizer):
    pairs = [fb.PairRecord(prompt="there is nothing you can do", chosen=" open the windows",
                           rejected=" green", margin=2.0),
             fb.PairRecord(prompt="a dog is", chosen=" a furry animal", rejected=" purple"),
             fb.PairRecord(prompt="a dog", chosen=" a furry animal is a dog is a dog",
                           rejected=" green")]
    ds = fb.records_to_dataset(pairs)
    batch, report = fb.encode_pairs(tokenizer, ds, config=fb.BatchConfig(max_length=7))
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 2, 7)
    assert batch.last_token_index.shape == (2, 2) and (batch.last_token_index == 6).all()
    np.testing.assert_array_equal(batch.margin, np.array([2.0, 0.0], np.float32))
    # Pair 0: the longer (chosen, 3 tokens) leaves 4 prompt tokens; both sides share them.
    prompt = ids(tokenizer, "nothing you can do")
    assert batch.input_ids[0, 0].tolist() == prompt + ids(tokenizer, "open the windows")
    assert batch.input_ids[0, 1].tolist() == [tokenizer.pad_token_id] * 2 + prompt + ids(
        tokenizer, "green")
    assert report.kept_indices == (0, 1) and report.prompts_truncated == 1
    assert report.skipped_completion_too_long == 1
    right, _ = fb.encode_pairs(tokenizer, pairs[1:2], config=fb.BatchConfig(
        max_length=7, padding_side="right"))
    assert right.last_token_index.tolist() == [[5, 3]]  # 3 + 3 and 3 + 1 tokens


def test_ranking_batch_from_consensus(tokenizer):
    mk = lambda pid, comps, rankings, flagged: fb.RankedFeedback(
        prompt_id=pid, prompt="a dog is", completions=tuple(comps), criterion="helpfulness",
        instructions_id="v1", labels=tuple(
            fb.Label(labeler=f"l{k}", ranking=tuple(r), flagged=tuple(f))
            for k, (r, f) in enumerate(zip(rankings, flagged))))
    records = [
        mk("p1", [" a furry animal", " green", " purple the the", " sorry"],
           [[1, 2, None, 3], [1, 3, None, 2]], [[2], [2]]),  # c2 flagged by both
        mk("p2", [" green", " a furry animal"], [[2, 1]], [[]]),
        mk("p3", [" green", " sure"], [[1, None]], [[1]]),  # one valid completion: skipped
    ]
    result = fb.build_consensus(records)
    batch, report = fb.encode_rankings(tokenizer, result.prompts,
                                       config=fb.BatchConfig(max_length=8))
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 4, 8)
    assert batch.ranks.shape == batch.valid.shape == batch.last_token_index.shape == (2, 4)
    # p1: fractional ranks (1, 2, -, 3) and (1, 3, -, 2) -> c1 and c3 tie -> dense (1, 2, 0, 2).
    assert batch.ranks.tolist() == [[1, 2, 0, 2], [2, 1, 0, 0]]
    assert batch.valid.tolist() == [[True, True, False, True], [True, True, False, False]]
    assert batch.attention_mask[0, 2].sum() == 0 and batch.attention_mask[1, 3].sum() == 0
    assert batch.input_ids[1, 1, -6:].tolist() == ids(tokenizer, "a dog is a furry animal")
    assert report.kept_indices == (0, 1) and report.skipped_too_few_valid == 1
    with pytest.raises(ValueError, match="more than num_completions"):
        fb.encode_rankings(tokenizer, result.prompts, config=fb.BatchConfig(max_length=8),
                           num_completions=3)


def test_batches_are_pytrees_of_numpy(tokenizer):
    batch, _ = fb.encode_sequences(tokenizer, ["a dog"], [" green"],
                                   config=fb.BatchConfig(max_length=4))
    assert all(isinstance(x, np.ndarray) for x in batch)
    assert batch._fields == ("input_ids", "attention_mask", "last_token_index")
