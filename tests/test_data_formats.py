"""Dataset formats: detection for every TRL format from every source, --format forcing, and the
errors for rows that fit no format (naming the file, the row and the formats expected)."""

import json

import datasets
import pytest

from rlhf_jax.data import (FORMAT_NAMES, DataError, DatasetFormat, Kind, detect_format, load_rows, row_parts,
                           split_shared_text)
from tests.chat_fixtures import EXAMPLES, SOURCE_KINDS, dataset_path, write_dataset


def test_examples_cover_every_format():
    assert sorted(EXAMPLES) == sorted(FORMAT_NAMES) and len(FORMAT_NAMES) == 10


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_detected_from_every_source(tmp_path, name, kind):
    rows = load_rows(dataset_path(tmp_path, name, kind))
    assert len(rows) == 3
    assert detect_format(rows).name == name
    # the rows come back as written (message lists as lists of dicts, even through Arrow)
    assert [dict(r) for r in rows] == EXAMPLES[name]


@pytest.mark.parametrize("name", ["standard_prompt_completion", "conversational_preference"])
def test_datasets_objects_and_splits(tmp_path, name):
    rows = EXAMPLES[name]
    assert detect_format(load_rows(datasets.Dataset.from_list(rows))).name == name
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
    with pytest.raises(DataError, match=r"splits \['test', 'train'\].*--split"):
        load_rows(dd)
    assert len(load_rows(dd, split="test")) == 1
    with pytest.raises(DataError, match="no split 'dev'"):
        load_rows(dd, split="dev")
    folder = write_dataset(None, tmp_path / "dd", "disk", splits={"train": rows, "test": rows[:2]})
    assert len(load_rows(folder, split="test")) == 2
    assert load_rows(folder, split="train").where(2) == f"{folder}[2]"
    one = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    assert len(load_rows(one)) == 3  # a single split needs no --split
    with pytest.raises(DataError, match="single file"):
        load_rows(dataset_path(tmp_path, name, "jsonl"), split="train")


def test_json_lines_with_json_extension_and_blank_lines(tmp_path):
    # Dataset.to_json writes JSON lines into a .json file; blank lines are skipped, line numbers kept
    path = tmp_path / "d.json"
    path.write_text("\n" + json.dumps({"text": "a"}) + "\n\n" + json.dumps({"question": "b"}) + "\n")
    rows = load_rows(str(path))
    assert rows.lines == (2, 4) and rows.where(1) == f"{path}:4"
    with pytest.raises(DataError) as e:
        detect_format(rows)
    msg = str(e.value)
    assert msg.startswith(f"{path}:4: the row fits no dataset format (its fields: ['question'])")
    for expected in ("language modeling {text} or {messages}", "prompt-only {prompt}",
                     "prompt-completion {prompt, completion}", "preference {prompt, chosen, rejected}",
                     "implicit preference {chosen, rejected}", "--format"):
        assert expected in msg


def test_no_fit_in_parquet_names_the_row_index(tmp_path):
    path = write_dataset([{"prompt": "a", "completion": "b"}, {"instruction": "c", "output": "d"}],
                         tmp_path / "x.parquet", "parquet")
    # Arrow unifies the columns: row 1 has prompt=None, completion=None (absent), instruction/output set
    with pytest.raises(DataError, match=r"x\.parquet\[1\]: the row fits no dataset format \(its fields: "
                                        r"\[.instruction., .output.\], null: \[.completion., .prompt.\]\)"):
        detect_format(load_rows(path))


def test_rows_must_share_one_format(tmp_path):
    rows = EXAMPLES["standard_prompt_completion"][:2] + [{"prompt": "only a prompt"}]
    path = write_dataset(rows, tmp_path / "m.jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl:3: this row is standard_prompt_only but .*m\.jsonl:1 is "
                                        r"standard_prompt_completion"):
        detect_format(load_rows(path))


def test_forcing_a_format(tmp_path):
    path = dataset_path(tmp_path, "standard_preference", "jsonl")
    rows = load_rows(path)
    assert detect_format(rows, force="prompt_only") == DatasetFormat(Kind.PROMPT_ONLY, False)
    assert detect_format(rows, force="standard_prompt_only").name == "standard_prompt_only"
    with pytest.raises(DataError, match=r":1: --format conversational_prompt_only expects message lists"):
        detect_format(rows, force="conversational_prompt_only")
    with pytest.raises(DataError, match=r":1: no field 'completion': a prompt_completion row has \['prompt', "
                                        r"'completion'\] \(--format prompt_completion\)"):
        detect_format(rows, force="prompt_completion")
    with pytest.raises(DataError, match="unknown --format 'chat'"):
        detect_format(rows, force="chat")
    # TRL's unpaired preference is not SFT data unless forced (the label would be ignored silently)
    kto = load_rows([{"prompt": "The sky is", "completion": " green.", "label": False}])
    with pytest.raises(DataError, match=r"<rows>\[0\]: an unpaired preference row .* force --format prompt_completion"):
        detect_format(kto)
    assert detect_format(kto, force="prompt_completion").name == "standard_prompt_completion"
    # a row with both text and messages is conversational unless forced
    both = load_rows([{"text": "t", "messages": [{"role": "user", "content": "u"}]}])
    assert detect_format(both).name == "conversational_language_modeling"
    assert detect_format(both, force="standard_language_modeling").name == "standard_language_modeling"


def test_message_validation():
    bad_role = [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}]
    with pytest.raises(DataError, match=r"<rows>\[0\]: field 'messages\[1\]': role 'bot' is not one of "
                                        r"\['system', 'user', 'assistant', 'tool'\]"):
        detect_format(load_rows(bad_role))
    bad_content = [{"prompt": [{"role": "user", "content": 3}], "completion": [{"role": "assistant", "content": "a"}]}]
    with pytest.raises(DataError, match=r"field 'prompt\[0\]': content must be a string, got int"):
        detect_format(load_rows(bad_content))
    mixed = [{"prompt": [{"role": "user", "content": "q"}], "completion": "a"}]
    with pytest.raises(DataError, match="field 'prompt' is a message list but 'completion' is not"):
        detect_format(load_rows(mixed))
    rows = load_rows([{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]}])
    with pytest.raises(DataError, match=r"completion\[0\]' has role 'user'; a completion starts with an assistant"):
        row_parts(rows[0], detect_format(rows), where=rows.where(0))


def test_arrow_nulls_in_messages_are_dropped(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "yo"}]}]
    path = write_dataset(rows, tmp_path / "n.parquet", "parquet")
    loaded = load_rows(path)
    assert loaded[0]["messages"][1] == {"role": "assistant", "content": "yo", "name": None}  # Arrow's doing
    parts = row_parts(loaded[0], detect_format(loaded), where=loaded.where(0))
    assert parts.sequence == rows[0]["messages"]


def test_implicit_prompts():
    # standard: common prefix cut back before its last whitespace (the words both completions start with stay)
    assert split_shared_text("Q: hot? A: Sure.", "Q: hot? A: Sorry.") == ("Q: hot? A:", " Sure.", " Sorry.")
    rows = load_rows(EXAMPLES["standard_implicit_preference"])
    parts = row_parts(rows[0], detect_format(rows), where="r")
    assert (parts.prompt, parts.chosen, parts.rejected) == ("The sky is", " blue.", " green.")
    rows = load_rows(EXAMPLES["conversational_implicit_preference"])
    parts = row_parts(rows[0], detect_format(rows), where="r")
    assert parts.prompt == [{"role": "user", "content": "What color is the sky?"}]
    assert parts.chosen == [{"role": "assistant", "content": "It is blue."}]
    assert parts.rejected == [{"role": "assistant", "content": "It is green."}]
    same_start = load_rows([{"chosen": [{"role": "assistant", "content": "a"}],
                             "rejected": [{"role": "assistant", "content": "b"}]}])
    with pytest.raises(DataError, match=r"<rows>\[0\]: chosen and rejected share no leading message"):
        row_parts(same_start[0], detect_format(same_start), where=same_start.where(0))


def test_unreadable_sources(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_rows(str(tmp_path / "bad.jsonl"))
    (tmp_path / "d.csv").write_text("text\na\n")
    with pytest.raises(DataError, match=r"unknown extension '\.csv'"):
        load_rows(str(tmp_path / "d.csv"))
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_rows(str(tmp_path / "folder"))
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        (tmp_path / "empty.jsonl").write_text("\n")
        detect_format(load_rows(str(tmp_path / "empty.jsonl")))
