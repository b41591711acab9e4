"""Validation of feedback files: a corpus of malformed files, strict and lenient reads."""

import json
import pathlib
import pickle

import pytest

from rlhf_jax import feedback as fb

DATA = pathlib.Path(__file__).parent / "data" / "feedback"

# file -> (kind, line, field, words in the reason). Each file's first bad record is on `line`.
CORPUS = {
    "ranked_bad_json.jsonl": ("ranked", 2, None, "invalid JSON"),
    "ranked_not_object.jsonl": ("ranked", 3, None, "expected a JSON object, got list"),
    "ranked_missing_field.jsonl": ("ranked", 1, "criterion", "missing required field"),
    "ranked_wrong_type.jsonl": ("ranked", 2, "prompt",
                                "expected a string or a message list, got integer"),
    "ranked_label_missing_field.jsonl": ("ranked", 2, "labels[0].flagged",
                                         "missing required field"),
    "ranked_ranking_wrong_length.jsonl": ("ranked", 2, "labels[1].ranking",
                                          "has 2 entries but the record has 3 completions"),
    "ranked_rank_out_of_range.jsonl": ("ranked", 2, "labels[1].ranking[2]",
                                       "rank 4 is out of range 1..3"),
    "ranked_rank_zero.jsonl": ("ranked", 2, "labels[1].ranking[0]", "rank 0 is out of range"),
    "ranked_rank_not_integer.jsonl": ("ranked", 1, "labels[1].ranking[0]",
                                      "expected an integer, got number"),
    "ranked_flagged_nonexistent.jsonl": ("ranked", 3, "labels[0].flagged[0]",
                                         "index 3 does not exist"),
    "ranked_flagged_but_ranked.jsonl": ("ranked", 2, "labels[0].ranking[2]",
                                        "flagged but ranked 3"),
    "ranked_unflagged_null.jsonl": ("ranked", 2, "labels[1].ranking[2]",
                                    "rank null but is not flagged"),
    "ranked_empty_completions.jsonl": ("ranked", 2, "completions", "at least one completion"),
    "ranked_duplicate_labeler.jsonl": ("ranked", 2, "labels[1].labeler",
                                       "duplicate labeler 'ann'"),
    "ranked_duplicate_prompt_id.jsonl": ("ranked", 3, "prompt_id",
                                         "duplicate prompt_id 'p1' (first on line 1)"),
    "binary_bad_thumbs.jsonl": ("binary", 2, "thumbs", "must be \"up\" or \"down\""),
    "binary_missing_labeler.jsonl": ("binary", 1, "labeler", "missing required field"),
    "binary_duplicate_vote.jsonl": ("binary", 3, "labeler", "already judged"),
    "pairwise_missing_rejected.jsonl": ("pairwise", 1, "rejected", "missing required field"),
    "pairwise_identical.jsonl": ("pairwise", 2, "rejected", "identical to chosen"),
    "pairwise_bad_margin.jsonl": ("pairwise", 1, "margin", "expected a number, got string"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_file_strict(name):
    kind, line, field, words = CORPUS[name]
    path = DATA / name
    with pytest.raises(fb.FeedbackError) as info:
        fb.read_feedback(path, kind=kind, strict=True)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), line, field)
    assert words in err.reason
    # The message names all three, so a person can find the record.
    assert f"{path}:{line}:" in str(err)
    assert (f"field '{field}'" if field else "record") in str(err)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_file_lenient_counts_everything(name):
    kind, line, field, _ = CORPUS[name]
    records, report = fb.read_feedback(DATA / name, kind=kind, strict=False)
    assert report.n_skipped == 1 and report.errors[0].line == line
    assert report.errors[0].field == field
    assert report.n_records == report.n_valid + report.n_skipped == len(records) + 1


def test_corpus_covers_every_file():
    bad = {p.name for p in DATA.glob("*.jsonl")} - {p.name for p in DATA.glob("*_good.jsonl")}
    assert bad == set(CORPUS) | {"ranked_mixed.jsonl"}


def test_good_files_read_back():
    ranked, rep = fb.read_ranked(DATA / "ranked_good.jsonl")
    assert rep.ok and rep.n_valid == 2 and len(ranked) == 2
    r = ranked[0]
    assert r.labels[0] == fb.Label(labeler="ann", ranking=(2, 1, None), flagged=(2,))
    binary, rep = fb.read_feedback(DATA / "binary_good.jsonl")  # kind detected
    assert rep.kind == "binary" and len(binary) == 7
    pairs, rep = fb.read_feedback(DATA / "pairwise_good.jsonl")
    assert rep.kind == "pairwise"
    assert pairs[0] == fb.PairRecord(prompt="A dog is", chosen=" a furry animal",
                                     rejected=" green", margin=2.0)
    # The prefix form: the shared prompt is split off before the last whitespace.
    assert pairs[1].prompt == "Human: Is a dog furry?\n\nAssistant:"
    assert (pairs[1].chosen, pairs[1].rejected) == (" Sure, mostly.", " Sorry, no idea.")


def test_lenient_mixed_file_reports_each_skip_with_reason():
    records, report = fb.read_ranked(DATA / "ranked_mixed.jsonl", strict=False)
    assert [r.prompt_id for r in records] == ["p1", "p4", "p6"]
    assert [(e.line, e.field) for e in report.errors] == [
        (2, None), (4, "labels[1].labeler"), (6, "completions")]
    assert report.blank_lines == 1
    assert report.n_records == 6 == report.n_valid + report.n_skipped
    assert report.reasons() == {"<record>": 1, "completions": 1, "labels[1].labeler": 1}
    text = report.summary()
    assert "3 valid, 3 skipped" in text and "ranked_mixed.jsonl:4: field 'labels[1].labeler'" in text
    with pytest.raises(fb.FeedbackError, match="ranked_mixed.jsonl:2: record: invalid JSON"):
        fb.read_ranked(DATA / "ranked_mixed.jsonl")


def test_not_utf8_and_unknown_kind(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"chosen": "a", "rejected": "b"}\n{"chosen": "\xff"}\n')
    _, report = fb.read_feedback(path, strict=False)
    assert report.errors[0].line == 2 and "UTF-8" in report.errors[0].reason
    path.write_text('{"foo": 1}\n')
    with pytest.raises(fb.FeedbackError, match="cannot tell the record kind"):
        fb.read_feedback(path)


def test_split_common_prefix_cases():
    assert fb.split_common_prefix("Q: hot? A: Sure.", "Q: hot? A: Sorry.") == (
        "Q: hot? A:", " Sure.", " Sorry.")
    assert fb.split_common_prefix("A: yes", "A: yes, more") == ("A:", " yes", " yes, more")
    assert fb.split_common_prefix("abc", "abd") == ("", "abc", "abd")
    assert fb.split_common_prefix("x", "x") == ("", "x", "x")


def test_error_pickles_and_dataset_rows_validate():
    err = fb.FeedbackError("bad", file="f.jsonl", line=3, field="prompt")
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.line, again.field, str(again)) == (
        "f.jsonl", 3, "prompt", str(err))
    ranked, _ = fb.read_ranked(DATA / "ranked_good.jsonl")
    ds = fb.records_to_dataset(ranked)
    back, report = fb.records_from_dataset(ds, kind="ranked")
    assert back == ranked and report.ok
    rows = ds.to_list()
    rows[1]["labels"][0]["ranking"] = [1, 1]
    bad = fb.records_to_dataset(ranked).from_list(rows)
    with pytest.raises(fb.FeedbackError) as info:
        fb.records_from_dataset(bad, kind="ranked", source="mem")
    assert (info.value.file, info.value.line, info.value.field) == (
        "mem", 2, "labels[0].ranking")


def test_write_jsonl_round_trip(tmp_path):
    ranked, _ = fb.read_ranked(DATA / "ranked_good.jsonl")
    out = tmp_path / "out.jsonl"
    assert fb.write_jsonl(ranked, out) == 2
    assert json.loads(out.read_text().splitlines()[0])["labels"][0]["ranking"] == [2, 1, None]
    assert fb.read_ranked(out)[0] == ranked


@pytest.mark.parametrize("name,kind", [("binary_good.jsonl", "binary"),
                                       ("pairwise_good.jsonl", "pairwise")])
def test_dataset_round_trip_binary_and_pairwise(name, kind):
    records, _ = fb.read_feedback(DATA / name, kind=kind)
    ds = fb.records_to_dataset(records)
    assert ds.features == {"binary": fb.BINARY_FEATURES, "pairwise": fb.PAIR_FEATURES}[kind]
    back, report = fb.records_from_dataset(ds, kind=kind)
    assert back == records and report.ok
