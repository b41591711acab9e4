"""Feedback files made bad on purpose (issue #14): each is an error naming file, line and field,
strict reads raise it, lenient reads skip the record and count it, and the CLI never shows a
traceback."""

import json
import subprocess
import sys

import pytest

from rlhf_jax import feedback as fb
from rlhf_jax.feedback import cli

RANKED = {"prompt_id": "p1", "prompt": "My house is too hot.",
          "completions": ["Open the windows.", "Buy a dog."], "criterion": "helpfulness",
          "instructions_id": "v1",
          "labels": [{"labeler": "ann", "ranking": [1, 2], "flagged": []}]}


def ranked(pid, **changes):
    return {**RANKED, "prompt_id": pid, **changes}


def write(tmp_path, lines, name="f.jsonl"):
    """``lines``: dicts (dumped as JSON) or raw strings."""
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def check_bad(path, kind, line, field, words):
    """Strict raises (file, line, field, words); lenient skips exactly that record."""
    with pytest.raises(fb.FeedbackError) as info:
        fb.read_feedback(path, kind=kind)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), line, field), str(err)
    assert words in err.reason, err.reason
    assert str(err).startswith(f"{path}:{line}: ")
    records, report = fb.read_feedback(path, kind=kind, strict=False)
    assert [(e.line, e.field) for e in report.errors] == [(line, field)]
    assert report.n_records == len(records) + 1 == report.n_valid + report.n_skipped
    return records, report


@pytest.mark.parametrize("text", ["", "\n  \n\n"])
def test_empty_file_is_an_error_in_both_modes(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    for strict in (True, False):
        with pytest.raises(fb.FeedbackError, match="holds no records") as info:
            fb.read_feedback(path, strict=strict)
        assert (info.value.file, info.value.line) == (str(path), None)
        assert str(info.value) == f"{path}: holds no records (it is empty or has only blank lines)"
    empty = fb.records_to_dataset([])
    with pytest.raises(fb.FeedbackError, match="holds no records"):
        fb.records_from_dataset(empty, kind="pairwise")


def test_repeated_json_key_is_named_with_its_path(tmp_path):
    top = '{"chosen": "a", "rejected": "b", "chosen": "c"}'
    good = {"chosen": " yes", "rejected": " no", "prompt": "Q"}
    check_bad(write(tmp_path, [good, top]), "pairwise", 2, "chosen", "'chosen' appears twice")
    nested = json.dumps(ranked("p2")).replace('"ranking": [1, 2]', '"ranking": [1, 2], "ranking": [2, 1]')
    records, _ = check_bad(write(tmp_path, [ranked("p1"), nested, ranked("p3")]), "ranked", 2,
                           "labels[0].ranking", "appears twice in one object")
    assert [r.prompt_id for r in records] == ["p1", "p3"]


def test_binary_prompt_id_reused_for_another_prompt(tmp_path):
    vote = lambda prompt, completion, thumbs: {"prompt_id": "q1", "prompt": prompt, "labeler": "ann",
                                               "completion": completion, "thumbs": thumbs}
    path = write(tmp_path, [vote("Is a dog furry?", "Yes.", "up"), vote("Is a dog furry?", "No.", "down"),
                            vote("Is the sky green?", "Yes.", "down")])
    records, _ = check_bad(path, "binary", 3, "prompt_id", "names another prompt on line 1")
    # Without the bad vote, the pair is built within one prompt only.
    ds, _ = fb.binary_to_pairs(records)
    assert ds.to_list() == [{"prompt_id": "q1", "prompt": "Is a dog furry?", "chosen": "Yes.",
                             "rejected": "No.", "agreement": 1.0, "margin": None}]
    pair = lambda prompt: {"prompt_id": "x", "prompt": prompt, "chosen": " a", "rejected": " b"}
    check_bad(write(tmp_path, [pair("P"), pair("P"), pair("Q")]), "pairwise", 3, "prompt_id",
              "one prompt_id, one prompt")


@pytest.mark.parametrize("kind,record,field", [
    ("ranked", ranked("p2", completions=["Open the windows.", ""]), "completions[1]"),
    ("ranked", ranked("p2", completions=["  \n", "Buy a dog."]), "completions[0]"),
    ("binary", {"prompt": "P", "completion": "", "labeler": "ann", "thumbs": "up"}, "completion"),
    ("pairwise", {"prompt": "P", "chosen": "", "rejected": " b"}, "chosen"),
    ("pairwise", {"chosen": "Q: x? A: ", "rejected": "Q: x? A: no"}, "chosen"),  # empty once split
])
def test_empty_completions_are_errors(tmp_path, kind, record, field):
    first = {"ranked": ranked("p1"), "pairwise": {"prompt": "P", "chosen": " a", "rejected": " b"},
             "binary": {"prompt": "P", "completion": "c", "labeler": "bob", "thumbs": "up"}}[kind]
    check_bad(write(tmp_path, [first, record]), kind, 2, field, "empty")


def test_negative_margin_is_an_error_zero_is_not(tmp_path):
    pair = lambda m: {"prompt": "P", "chosen": " a", "rejected": " b", "margin": m}
    records, _ = check_bad(write(tmp_path, [pair(0.0), pair(-0.5), pair(1)]), "pairwise", 2,
                           "margin", "must be >= 0, got -0.5")
    assert [r.margin for r in records] == [0.0, 1.0]


def test_copeland_negative_mean_gap_is_clipped_and_counted():
    # a beats b for 2 of 3 labelers by one place; the third puts a last, three places below b:
    # Copeland ranks a first, but the mean rank gap of (a, b) is (1 + 1 - 3) / 3 = -1/3.
    labels = [fb.Label(labeler=n, ranking=r, flagged=()) for n, r in
              (("l1", (1, 2, 3, 4)), ("l2", (1, 2, 3, 4)), ("l3", (4, 1, 2, 3)))]
    rec = fb.RankedFeedback(prompt_id="p", prompt="P", completions=("a", "b", "c", "d"),
                            criterion="helpfulness", instructions_id="v1", labels=tuple(labels))
    ds, report = fb.feedback_to_pairs([rec], config=fb.ConsensusConfig(method="copeland"))
    ab = next(row for row in ds if (row["chosen"], row["rejected"]) == ("a", "b"))
    assert ab["margin"] == 0.0 and ab["agreement"] == pytest.approx(2 / 3)
    assert report.margins_clipped == 1 and min(ds["margin"]) >= 0.0
    # Borda over the same labels: mean ranks a 2, b 5/3, so b comes first, margin positive.
    ds, report = fb.feedback_to_pairs([rec])
    assert report.margins_clipped == 0 and ds[0]["chosen"] == "b"


@pytest.mark.parametrize("deep", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_deeply_nested_json_is_a_feedback_error_not_a_crash(tmp_path, deep):
    path = write(tmp_path, [ranked("p1"), deep, ranked("p3")])
    records, report = check_bad(path, "ranked", 2, None, "nested too deeply")
    assert [r.prompt_id for r in records] == ["p1", "p3"]
    _, report = fb.read_feedback(path, strict=False)  # auto: the unreadable line has no kind
    assert report.kind == "ranked" and report.n_skipped == 1


def test_lone_surrogate_is_refused_and_the_rest_converts(tmp_path, capsys):
    bad = json.dumps(ranked("p2", prompt="Hot \ud83d house"))  # half an emoji, as \ud83d
    assert "\\ud83d" in bad
    path = write(tmp_path, [ranked("p1"), bad])
    check_bad(path, "ranked", 2, "prompt", "lone surrogate '\\ud83d' at character 4")
    assert cli.main(["validate", str(path)]) == 1
    assert f"{path}:2: field 'prompt': holds a lone surrogate" in capsys.readouterr().out
    # Lenient stats and to-pairs run on what is left (they used to crash on the surrogate).
    assert cli.main(["stats", "--lenient", str(path)]) == 0
    assert cli.main(["to-pairs", "--lenient", str(path), "--out", str(tmp_path / "p.parquet")]) == 0
    assert len(fb.load_pairs(tmp_path / "p.parquet")) == 1


def test_kind_auto_decides_per_record(tmp_path):
    stray = {"prompt": "P", "completion": "c", "labeler": "ann", "thumbs": "up"}
    path = write(tmp_path, [stray, ranked("p1"), ranked("p2"), ranked("p3")])
    records, report = check_bad(path, "auto", 1, None,
                                "is binary feedback by its keys, but this file holds ranked "
                                "feedback (3 of 4 records, first on line 2)")
    assert report.kind == "ranked" and [r.prompt_id for r in records] == ["p1", "p2", "p3"]
    # The first line of another kind in the middle of a file is named the same way.
    path = write(tmp_path, [ranked("p1"), ranked("p2"), stray, ranked("p3"), stray, stray])
    with pytest.raises(fb.FeedbackError, match="is binary feedback") as info:
        fb.read_feedback(path)
    assert info.value.line == 3


def test_prompt_forms_do_not_mix_in_one_file(tmp_path):
    chat = ranked("p9", prompt=[{"role": "user", "content": "Too hot."}])
    records, _ = check_bad(write(tmp_path, [ranked("p1"), chat, ranked("p2")]), "ranked", 2,
                           "prompt", "is a message-list prompt, but this file's prompts are text")
    assert len(records) == 2


def test_byte_order_mark_on_line_1_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ranked("p1")).encode() + b"\n")
    assert fb.read_ranked(path)[1].ok


def test_cli_missing_file_is_one_error_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    for argv in (["validate", str(missing)], ["stats", str(missing)],
                 ["to-pairs", str(missing), "--out", str(tmp_path / "p.jsonl")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"error: {missing}: cannot read: No such file or directory\n"
    # The standalone module: one line on stderr, no traceback.
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax.feedback.cli", "validate", str(missing)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: {missing}: cannot read: No such file or directory"]


def test_cli_bad_output_format_empty_file_and_no_pairs(tmp_path, capsys):
    good = write(tmp_path, [ranked("p1")])
    assert cli.main(["to-pairs", str(good), "--out", str(tmp_path / "p.csv")]) == 2
    assert "use .parquet, .jsonl or .json" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli.main(["validate", str(empty)]) == 1
    assert capsys.readouterr().err == (f"invalid: {empty}: holds no records (it is empty or has only "
                                       "blank lines)\n")
    tie = [{"labeler": "ann", "ranking": [1, 1], "flagged": []}]
    tied = write(tmp_path, [ranked("p1", labels=tie)], "t.jsonl")
    out = tmp_path / "tied.parquet"
    assert cli.main(["to-pairs", str(tied), "--out", str(out)]) == 1
    assert "no preference pair" in capsys.readouterr().err and not out.exists()
    assert cli.main(["stats", str(good), "--min-agreement", "2"]) == 2
    assert "min_agreement" in capsys.readouterr().err
