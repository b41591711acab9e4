"""Stage-ready encodings: SFT rows from every SFT format (loss where it belongs, truncation and
skips counted), prompts for generation from every prompt-bearing format, and preference pairs
(explicit or implicit, strings or conversations) that the pair encoder takes."""

import numpy as np
import pytest

from rlhf_jax.data import (DataConfig, DataError, SFTDataConfig, encode_preference_data, encode_prompt_data,
                           encode_sft_data, tokenize_sft)
from tests.chat_fixtures import CONVERSATION, EXAMPLES, chat_tokenizer, write_dataset


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _real(batch, row):
    keep = batch.attention_mask[row] == 1
    return batch.input_ids[row][keep].tolist(), batch.loss_mask[row][keep].tolist()


def _loss_runs(tok, ids, mask):
    """The texts of the runs of consecutive loss tokens."""
    runs, cur = [], []
    for i, m in zip(ids + [None], mask + [0]):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def test_standard_prompt_completion_equals_the_sft_trainer_encoder(tok):
    from rlhf_jax.train.sft import encode_sft

    rows = EXAMPLES["standard_prompt_completion"]
    batch, report = encode_sft_data(rows, tok, config=SFTDataConfig(max_length=16))
    ref, _ = encode_sft(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], max_length=16)
    for a, b in zip(batch, ref):
        np.testing.assert_array_equal(a, b)
    assert report.format == "standard_prompt_completion" and report.kept_indices == (0, 1, 2)
    ids, mask = _real(batch, 0)  # "The sky is" | " blue." <|endoftext|>
    assert ids == _ids(tok, "The sky is") + _ids(tok, " blue.") + [tok.eos_token_id]
    assert _loss_runs(tok, ids, mask) == [" blue.<|endoftext|>"]


def test_standard_text_and_eos(tok):
    rows = EXAMPLES["standard_language_modeling"] + [{"text": "Ends with EOS.<|endoftext|>"}]
    batch, _ = encode_sft_data(rows, tok, config=SFTDataConfig(max_length=16))
    ids, mask = _real(batch, 0)
    assert ids == _ids(tok, "The sky is blue.") + [tok.eos_token_id]
    assert mask == [0] + [1] * (len(ids) - 1)  # every token but the first (nothing predicts it)
    assert _real(batch, 3)[0] == _ids(tok, "Ends with EOS.") + [tok.eos_token_id]  # not appended twice
    batch, _ = encode_sft_data(rows, tok, config=SFTDataConfig(max_length=16, append_eos=False))
    assert _real(batch, 0)[0] == _ids(tok, "The sky is blue.")


def test_conversational_sft_loss_on_assistant_turns_only(tok):
    batch, report = encode_sft_data([{"messages": CONVERSATION}], tok, config=SFTDataConfig(max_length=64))
    ids, mask = _real(batch, 0)
    assert ids == _ids(tok, tok.apply_chat_template(CONVERSATION, tokenize=False))
    assert _loss_runs(tok, ids, mask) == ["It is blue.<|im_end|>\n", "Green, mostly.<|im_end|>\n"]
    # prompt-completion: assistant turns inside the prompt are context, only the completion is scored
    rows = [{"prompt": CONVERSATION[:4], "completion": CONVERSATION[4:]}]
    batch, report = encode_sft_data(rows, tok, config=SFTDataConfig(max_length=64))
    assert report.format == "conversational_prompt_completion"
    ids2, mask2 = _real(batch, 0)
    assert ids2 == ids
    assert _loss_runs(tok, ids2, mask2) == ["Green, mostly.<|im_end|>\n"]


def test_truncation_and_skips_are_counted(tok, tmp_path):
    long_prompt = "The sky is blue. " * 6
    rows = [{"prompt": long_prompt, "completion": " blue."},          # prompt cut from the left
            {"prompt": "The sky is", "completion": " blue." * 20},    # completion alone too long: skipped
            {"prompt": "The sun is", "completion": " yellow."}]       # fits
    path = write_dataset(rows, tmp_path / "pc.jsonl")
    examples, report = tokenize_sft(path, tok, config=SFTDataConfig(max_length=12))
    assert report.kept_indices == (0, 2) and report.truncated == 1 and report.skipped == {"completion_too_long": 1}
    completion = _ids(tok, " blue.") + [tok.eos_token_id]
    assert len(examples[0].input_ids) == 12 and examples[0].input_ids[-len(completion):] == completion
    assert examples[0].input_ids[:-len(completion)] == (_ids(tok, long_prompt))[-(12 - len(completion)):]
    assert f"{path}: standard_prompt_completion: 3 rows, 2 kept, 1 truncated, skipped: 1 completion_too_long" \
        == report.summary()
    _, report = tokenize_sft(path, tok, config=SFTDataConfig(max_length=12, overflow="skip"))
    assert report.kept_indices == (2,) and report.skipped == {"too_long": 2}
    # language modeling keeps the start; a conversation whose assistant turn is cut off has no loss left
    long_system = [{"role": "system", "content": "You are a terse assistant. " * 8}] + CONVERSATION[1:3]
    rows = [{"messages": CONVERSATION}, {"messages": long_system}]
    examples, report = tokenize_sft(rows, tok, config=SFTDataConfig(max_length=30))
    assert report.kept_indices == (0,) and report.truncated == 1 and report.skipped == {"no_loss_tokens": 1}
    full = _ids(tok, tok.apply_chat_template(CONVERSATION, tokenize=False))
    assert examples[0].input_ids == full[:30] and sum(examples[0].loss_mask) > 0


def test_sft_rejects_other_kinds(tok):
    with pytest.raises(DataError, match=r"<rows>: SFT takes language_modeling or prompt_completion data, but this "
                                        r"dataset is standard_preference"):
        tokenize_sft(EXAMPLES["standard_preference"], tok)


PROMPT_FORMATS = [n for n in EXAMPLES if "language_modeling" not in n]


@pytest.mark.parametrize("name", PROMPT_FORMATS)
def test_prompts_from_every_prompt_bearing_format(tok, name):
    prompts, report = encode_prompt_data(EXAMPLES[name], tok)
    assert report.format == name and report.kept == 3
    if name.startswith("conversational"):
        expected = tok.apply_chat_template([{"role": "user", "content": "What color is the sky?"}], tokenize=False,
                                           add_generation_prompt=True)
        assert expected.endswith("<|im_start|>assistant\n")
        assert prompts.prompts[0] == [{"role": "user", "content": "What color is the sky?"}]
    else:
        expected = "The sky is"
    assert prompts.texts[0] == expected and prompts.input_ids[0] == _ids(tok, expected)


def test_prompt_length_limit(tok):
    rows = [{"prompt": "The sky is blue. " * 5}, {"prompt": "The sun is"}]
    prompts, report = encode_prompt_data(rows, tok, max_length=4)
    assert report.truncated == 1 and prompts.input_ids[0] == _ids(tok, rows[0]["prompt"])[-4:]
    prompts, report = encode_prompt_data(rows, tok, max_length=4, overflow="skip")
    assert report.kept_indices == (1,) and report.skipped == {"too_long": 1}
    with pytest.raises(DataError, match="generation \\(prompts\\) takes prompt_only or prompt_completion or "
                                        "preference or implicit_preference data"):
        encode_prompt_data(EXAMPLES["conversational_language_modeling"], tok)
    # a preference file read as prompt-only (--format prompt_only): its prompts
    forced, report = encode_prompt_data(EXAMPLES["standard_preference"], tok,
                                        data_config=DataConfig(format="prompt_only"))
    assert report.format == "standard_prompt_only" and forced.texts == ["The sky is", "The grass is", "The sun is"]


@pytest.mark.parametrize("style", ["standard", "conversational"])
def test_preference_pairs_explicit_and_implicit_agree(tok, style):
    explicit, report = encode_preference_data(EXAMPLES[f"{style}_preference"], tok)
    implicit, _ = encode_preference_data(EXAMPLES[f"{style}_implicit_preference"], tok)
    assert explicit == implicit and report.kept == 3
    pair = explicit[0]
    if style == "standard":
        assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("The sky is", " blue.", " green.")
    else:
        assert pair["prompt"].endswith("<|im_start|>assistant\n")
        assert (pair["chosen"], pair["rejected"]) == ("It is blue.<|im_end|>\n", "It is green.<|im_end|>\n")
        whole = tok.apply_chat_template([{"role": "user", "content": "What color is the sky?"},
                                         {"role": "assistant", "content": "It is blue."}], tokenize=False)
        assert pair["prompt"] + pair["chosen"] == whole
        assert pair["prompt_ids"] + pair["chosen_ids"] == _ids(tok, whole)


def test_pairs_feed_the_pair_encoder(tok):
    from rlhf_jax.feedback import BatchConfig, encode_pairs

    rows = [dict(r, margin=1.5) for r in EXAMPLES["conversational_preference"]]
    pairs, _ = encode_preference_data(rows, tok)
    assert pairs[0]["margin"] == 1.5
    batch, report = encode_pairs(tok, pairs, config=BatchConfig(max_length=32, add_bos=False))
    assert report.kept == 3
    for side, key in ((0, "chosen_ids"), (1, "rejected_ids")):
        real = batch.input_ids[0, side][batch.attention_mask[0, side] == 1].tolist()
        assert real == pairs[0]["prompt_ids"] + pairs[0][key]
    np.testing.assert_array_equal(batch.margin, [1.5, 1.5, 1.5])
    with pytest.raises(DataError, match="preference training takes preference or implicit_preference data"):
        encode_preference_data(EXAMPLES["standard_prompt_completion"], tok)


def test_bos_once_and_kept_when_the_prompt_is_cut():
    # a tokenizer that puts a BOS in front of texts (as Llama's do), with a template that writes one too
    from tokenizers import processors

    tok = chat_tokenizer("llama3")
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                                  special_tokens=[("<|begin_of_text|>", bos)])
    assert tok("hi")["input_ids"][0] == bos
    long_prompt = "The sky is blue. " * 6
    examples, report = tokenize_sft([{"prompt": long_prompt, "completion": " blue."}], tok,
                                    config=SFTDataConfig(max_length=10))
    completion = _ids(tok, " blue.") + [tok.eos_token_id]
    assert report.truncated == 1
    assert examples[0].input_ids == [bos] + _ids(tok, long_prompt)[-(9 - len(completion)):] + completion
    prompts, _ = encode_prompt_data([{"prompt": long_prompt}], tok, max_length=5)
    assert prompts.input_ids[0] == [bos] + _ids(tok, long_prompt)[-4:]
    # conversational: the template's BOS only (rendered text is tokenised without special tokens)
    examples, _ = tokenize_sft(EXAMPLES["conversational_prompt_completion"], tok)
    assert examples[0].input_ids[:2] == [bos, tok.convert_tokens_to_ids("<|start_header_id|>")]
    row = EXAMPLES["conversational_prompt_completion"][0]
    whole = tok.apply_chat_template(row["prompt"] + row["completion"], return_dict=True)["input_ids"]
    assert examples[0].input_ids == list(whole)
