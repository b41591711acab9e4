"""Packing: rows, segment ids and positions checked by hand; the packed SFT loss equals the
unpacked loss on the same examples (token mean over all loss tokens) through the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import (DataConfig, SFTDataConfig, encode_sft_data, pack_examples, pad_left, padding_id,
                           tokenize_sft)
from rlhf_jax.losses import masked_mean, token_logprobs
from rlhf_jax.model import ModelConfig, Transformer, positions_from_segments
from tests.chat_fixtures import CONVERSATION, EXAMPLES, chat_tokenizer


def _examples(lengths):
    # example k: tokens 10k+1, 10k+2, ...; loss on every token (the packer zeroes each first one)
    return [(list(range(10 * k + 1, 10 * k + 1 + n)), [1] * n) for k, n in enumerate(lengths)]


def test_best_fit_rows_by_hand():
    # lengths 5, 4, 3, 2 into rows of 8, longest first into the row with least room that fits:
    # 5 -> row0 (room 3); 4 -> new row1 (room 4); 3 -> row0 (room 0); 2 -> row1 (room 2)
    packed, report = pack_examples(_examples([5, 4, 3, 2]), length=8, pad_id=0)
    assert report.rows_of == ((0, 2), (1, 3)) and report.rows == 2 and report.tokens == 14
    np.testing.assert_array_equal(packed.input_ids, [[1, 2, 3, 4, 5, 21, 22, 23],
                                                     [11, 12, 13, 14, 31, 32, 0, 0]])
    np.testing.assert_array_equal(packed.segment_ids, [[1, 1, 1, 1, 1, 2, 2, 2],
                                                       [1, 1, 1, 1, 2, 2, 0, 0]])
    np.testing.assert_array_equal(packed.positions, [[0, 1, 2, 3, 4, 0, 1, 2],
                                                     [0, 1, 2, 3, 0, 1, 0, 1]])
    np.testing.assert_array_equal(packed.loss_mask, [[0, 1, 1, 1, 1, 0, 1, 1],
                                                     [0, 1, 1, 1, 0, 1, 0, 0]])
    # the model's own rule for positions gives the same numbers
    np.testing.assert_array_equal(positions_from_segments(jnp.asarray(packed.segment_ids)), packed.positions)
    assert report.fill == pytest.approx(14 / 16)


def test_sequential_rows_and_overflow_by_hand():
    # in order: 5 -> row0 (room 3); 4 does not fit -> row1 (room 4); 3 -> row1 (room 1); 2 -> row2
    packed, report = pack_examples(_examples([5, 4, 3, 2]), length=8, pad_id=0, strategy="sequential")
    assert report.rows_of == ((0,), (1, 2), (3,))
    np.testing.assert_array_equal(packed.segment_ids[1], [1, 1, 1, 1, 2, 2, 2, 0])
    # too long: cut to the row (counted) or skipped (counted); an example with no loss left is dropped
    examples = _examples([10, 3]) + [([7, 8], [1, 0])]  # the last one's only loss token is its first
    packed, report = pack_examples(examples, length=8, pad_id=0)
    assert (report.truncated, report.skipped_no_loss, report.rows_of) == (1, 1, ((0,), (1,)))
    np.testing.assert_array_equal(packed.input_ids[0], [1, 2, 3, 4, 5, 6, 7, 8])
    packed, report = pack_examples(examples, length=8, pad_id=0, overflow="skip")
    assert (report.skipped_too_long, report.rows_of) == (1, ((1,),))


def _sft_loss(logits, input_ids, loss_mask):
    """``rlhf_jax.train.sft.lm_loss``: mean NLL over all loss tokens of the batch (a token mean)."""
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logp, loss_mask[:, 1:])


def test_packed_loss_equals_unpacked_loss():
    tok = chat_tokenizer()
    rows = (EXAMPLES["conversational_language_modeling"]
            + [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}])
    config = SFTDataConfig(max_length=64)
    examples, report = tokenize_sft(rows, tok, config=config)
    assert report.kept == 5 and report.n_skipped == 0
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    model = Transformer(cfg)
    # random parameters of the right shapes (no compiled init); a peaked, non-uniform next-token distribution
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)

    apply = jax.jit(lambda ids, **kw: model.apply({"params": params}, ids, **kw).logits)
    padded = pad_left(examples, pad_id=padding_id(tok), length=64)
    logits = apply(padded.input_ids, attention_mask=padded.attention_mask)
    unpacked = _sft_loss(logits, padded.input_ids, padded.loss_mask)

    packed, pack_report = pack_examples(examples, length=64, pad_id=padding_id(tok))
    assert pack_report.rows < len(examples)  # several examples share a row
    logits = apply(packed.input_ids, segment_ids=packed.segment_ids, positions=packed.positions)
    packed_loss = _sft_loss(logits, packed.input_ids, packed.loss_mask)

    # a third route: each example alone at the start of its row (right padding: causal attention
    # keeps the padding out of its tokens), NLL summed over all loss tokens / their count, in NumPy
    right, real = np.zeros((len(examples), 64), np.int32), np.zeros((len(examples), 64), np.int32)
    for r, (ids, _) in enumerate(examples):
        right[r, :len(ids)], real[r, :len(ids)] = ids, 1
    logp = np.asarray(jax.nn.log_softmax(apply(right, attention_mask=real), axis=-1), np.float64)
    total, count = 0.0, 0
    for r, (ids, mask) in enumerate(examples):
        for t in range(1, len(ids)):
            total -= mask[t] * logp[r, t - 1, ids[t]]
            count += mask[t]
    assert int(packed.loss_mask.sum()) == int(padded.loss_mask.sum()) == count
    np.testing.assert_allclose(float(packed_loss), float(unpacked), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(unpacked), total / count, rtol=1e-5, atol=1e-5)
    assert float(unpacked) > 1.0  # a real loss, not a degenerate 0

    # the same through encode_sft_data(packing=True): rows of dataset indices, the same segments
    batch, report = encode_sft_data(rows, tok, config=SFTDataConfig(max_length=64, packing=True),
                                    data_config=DataConfig())
    np.testing.assert_array_equal(batch.input_ids, packed.input_ids)
    assert sorted(i for r in report.packing.rows_of for i in r) == list(range(5))
    assert "packed 5 examples" in report.summary()
