"""Message-list prompts (TRL's conversational format) in feedback records and pairs (issue #13)."""

import json
import types

import datasets
import pytest

from rlhf_jax import feedback as fb

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "My house is too hot."}]
COMPLETIONS = ["There is nothing you can do.", "Open the windows at night.", "Buy a dog."]
LABELS = [{"labeler": "ann", "ranking": [2, 1, 3], "flagged": []},
          {"labeler": "bob", "ranking": [3, 1, 2], "flagged": []},
          {"labeler": "cid", "ranking": [2, 1, 3], "flagged": []}]


def ranked(prompt, pid="p1"):
    return {"prompt_id": pid, "prompt": prompt, "completions": COMPLETIONS,
            "criterion": "helpfulness", "instructions_id": "v1", "labels": LABELS}


def write(tmp_path, rows, name="chat.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assistant(text):
    return [{"role": "assistant", "content": text}]


def test_ranked_chat_record_reads_and_writes_back(tmp_path):
    (rec,), report = fb.read_feedback(write(tmp_path, [ranked(CHAT)]))
    assert report.ok and report.kind == "ranked"
    assert rec.prompt == (fb.Message(role="system", content="Be brief."),
                          fb.Message(role="user", content="My house is too hot."))
    assert rec.to_dict() == ranked(CHAT)  # the exact on-disk shape
    hash(rec)  # records stay hashable (messages are tuples of frozen Message)


def test_chat_pairs_equal_text_pairs_but_conversational(tmp_path):
    """The consensus does not look at the prompt: the same labels over a message-list prompt give
    the same pairs as over a text prompt, with the prompt kept and completions as assistant
    messages (TRL's conversational preference format)."""
    chat, _ = fb.read_ranked(write(tmp_path, [ranked(CHAT)]))
    text, _ = fb.read_ranked(write(tmp_path, [ranked("My house is too hot.")], "text.jsonl"))
    for config in (fb.ConsensusConfig(), fb.ConsensusConfig(method="copeland")):
        ds_chat, rep_chat = fb.feedback_to_pairs(chat, config=config)
        ds_text, rep_text = fb.feedback_to_pairs(text, config=config)
        assert rep_chat == rep_text and len(ds_chat) == 3
        assert ds_chat.features == fb.features_for("pairwise", conversational=True)
        for c, t in zip(ds_chat, ds_text):
            assert c["prompt"] == CHAT
            assert (c["chosen"], c["rejected"]) == (assistant(t["chosen"]), assistant(t["rejected"]))
            assert (c["agreement"], c["margin"]) == (t["agreement"], t["margin"])
    # Borda rank sums: c0 2 + 3 + 2 = 7, c1 3, c2 8 -> c1 > c0 > c2; the first pair is (c1, c0).
    ds, _ = fb.feedback_to_pairs(chat)
    assert (ds[0]["chosen"], ds[0]["rejected"]) == (assistant(COMPLETIONS[1]), assistant(COMPLETIONS[0]))
    assert ds[0]["margin"] == pytest.approx(4 / 3)  # rank gaps 1, 2, 1


@pytest.mark.parametrize("ext", [".parquet", ".jsonl"])
def test_chat_pairs_and_records_round_trip_parquet_jsonl_and_datasets(tmp_path, ext):
    chat, _ = fb.read_ranked(write(tmp_path, [ranked(CHAT), ranked(CHAT[1:], "p2")]))
    ds, _ = fb.feedback_to_pairs(chat)
    fb.save_pairs(ds, tmp_path / f"pairs{ext}")
    back = fb.load_pairs(tmp_path / f"pairs{ext}")
    assert back.features == ds.features and back.to_list() == ds.to_list()
    # Ranked records as a dataset, through Parquet, validated back into equal records.
    rds = fb.records_to_dataset(chat)
    assert rds.features == fb.features_for("ranked", conversational=True)
    rds.to_parquet(str(tmp_path / "ranked.parquet"))
    again, report = fb.records_from_dataset(datasets.Dataset.from_parquet(str(tmp_path / "ranked.parquet")),
                                            kind="ranked")
    assert again == chat and report.ok


def test_chat_pairs_are_what_trl_expects(tmp_path):
    """TRL's own functions are the reference: our pair rows are conversational for TRL, its
    `extract_prompt` splits full conversations as we do, and its chat-template step renders a
    row into prompt / chosen / rejected texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl.data_utils import apply_chat_template, extract_prompt, is_conversational

    chat, _ = fb.read_ranked(write(tmp_path, [ranked(CHAT)]))
    row = fb.feedback_to_pairs(chat)[0][0]
    assert is_conversational(row)
    full = {"chosen": CHAT + row["chosen"], "rejected": CHAT + row["rejected"]}
    ours = fb.parse_pairwise(full)
    assert extract_prompt(full) == {"prompt": CHAT, "chosen": row["chosen"], "rejected": row["rejected"]}
    assert fb.PairRecord(prompt=ours.prompt, chosen=ours.chosen, rejected=ours.rejected).to_dict() == {
        **{k: row[k] for k in ("prompt", "chosen", "rejected")}, "prompt_id": None, "agreement": None,
        "margin": None}
    core = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    texts = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert texts == {"prompt": "<system>Be brief.\n<user>My house is too hot.\n<assistant>",
                     "chosen": "Open the windows at night.\n",
                     "rejected": "There is nothing you can do.\n"}


def test_pairwise_and_binary_chat_records(tmp_path):
    pairs = [{"prompt": CHAT, "chosen": assistant("Open the windows."), "rejected": assistant("No."),
              "margin": 1.0},
             {"chosen": CHAT + assistant("Open the windows."), "rejected": CHAT + assistant("Buy a dog.")}]
    records, report = fb.read_feedback(write(tmp_path, pairs))
    assert report.ok and report.kind == "pairwise"
    assert records[1].prompt == records[0].prompt and records[1].rejected == (
        fb.Message(role="assistant", content="Buy a dog."),)
    votes = [{"prompt": CHAT, "completion": c, "labeler": "ann", "thumbs": t}
             for c, t in (("Open the windows.", "up"), ("Buy a dog.", "down"))]
    records, _ = fb.read_binary(write(tmp_path, votes, "b.jsonl"))
    ds, _ = fb.binary_to_pairs(records)
    assert ds.to_list() == [{"prompt_id": None, "prompt": CHAT, "chosen": assistant("Open the windows."),
                             "rejected": assistant("Buy a dog."), "agreement": 1.0, "margin": None}]


U, A = "user", "assistant"


@pytest.mark.parametrize("prompt,field,words", [
    ([], "prompt", "at least one message"),
    (["hi"], "prompt[0]", "expected a message"),
    ([{"role": "tool", "content": "x"}], "prompt[0].role", "must be one of ('system', 'user', 'assistant')"),
    ([{"role": U, "content": 3}], "prompt[0].content", "expected a string, got integer"),
    ([{"role": U, "content": " "}], "prompt[0].content", "must not be empty"),
    ([{"role": U}], "prompt[0].content", "missing required field"),
    ([{"role": U, "content": "x", "name": "ann"}], "prompt[0].name", "unknown key"),
    ([{"role": U, "content": "x"}, {"role": "system", "content": "y"}, {"role": U, "content": "z"}],
     "prompt[1].role", "system message may only come first"),
    ([{"role": U, "content": "x"}, {"role": A, "content": "y"}], "prompt[1].role",
     "must end with a user message"),
    ({"role": U, "content": "x"}, "prompt", "expected a string or a message list, got object"),
])
def test_message_lists_are_validated_strictly(tmp_path, prompt, field, words):
    path = write(tmp_path, [ranked(CHAT), ranked(prompt, "p2")])
    with pytest.raises(fb.FeedbackError) as info:
        fb.read_ranked(path)
    assert (info.value.line, info.value.field) == (2, field) and words in info.value.reason
    records, report = fb.read_ranked(path, strict=False)
    assert len(records) == 1 and report.n_skipped == 1


@pytest.mark.parametrize("record,field,words", [
    ({"prompt": CHAT, "chosen": "Open.", "rejected": assistant("No.")}, "chosen",
     "expected a list of assistant messages"),
    ({"prompt": CHAT, "chosen": assistant("Open."), "rejected": [{"role": U, "content": "No."}]},
     "rejected[0].role", "must be 'assistant'"),
    ({"chosen": CHAT + assistant("a"), "rejected": CHAT + [{"role": U, "content": "b"}]},
     "rejected[2].role", "must be 'assistant' after the shared prompt"),
    ({"chosen": assistant("a"), "rejected": assistant("b")}, "chosen", "share no leading message"),
    ({"chosen": CHAT + assistant("a"), "rejected": CHAT + assistant("a")}, "rejected", "identical"),
])
def test_conversational_pair_errors(record, field, words):
    with pytest.raises(fb.FeedbackError) as info:
        fb.parse_pairwise(record, file="f.jsonl", line=7)
    assert (info.value.line, info.value.field) == (7, field) and words in info.value.reason


def test_mixed_forms_cannot_become_one_dataset_and_encoders_ask_for_a_template():
    text = fb.PairRecord(prompt="P", chosen=" a", rejected=" b")
    chat = fb.parse_pairwise({"prompt": CHAT, "chosen": assistant("a"), "rejected": assistant("b")})
    with pytest.raises(ValueError, match="mix text prompts and message-list prompts"):
        fb.records_to_dataset([text, chat])
    with pytest.raises(ValueError, match="chat template"):
        tok = types.SimpleNamespace(pad_token_id=0, bos_token_id=None, eos_token_id=None)
        fb.encode_pairs(tok, [chat], config=fb.BatchConfig(max_length=8))
