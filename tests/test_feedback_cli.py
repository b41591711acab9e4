"""The feedback command line, the shipped labeler instructions, and import hygiene."""

import argparse
import json
import pathlib
import subprocess
import sys

import pytest

from rlhf_jax import feedback as fb
from rlhf_jax.feedback import cli

DATA = pathlib.Path(__file__).parent / "data" / "feedback"


def _crowd_file(tmp_path):
    """Three prompts, three careful labelers and one ('rev') who ranks in reverse."""
    rows = []
    orders = [[1, 2, 3, 4], [3, 1, 4, 2], [2, 4, 1, 3]]
    for p, truth in enumerate(orders):
        labels = [{"labeler": name, "ranking": truth, "flagged": []}
                  for name in ("ann", "bob", "cid")]
        labels.append({"labeler": "rev", "ranking": [5 - r for r in truth], "flagged": []})
        rows.append({"prompt_id": f"p{p}", "prompt": f"prompt {p}",
                     "completions": [f"p{p} c{i}" for i in range(4)],
                     "criterion": "helpfulness", "instructions_id": fb.LABELER_INSTRUCTIONS_ID,
                     "labels": labels})
    path = tmp_path / "crowd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_good_and_bad(capsys):
    assert cli.main(["validate", str(DATA / "ranked_good.jsonl")]) == 0
    assert "2 records, 2 valid, 0 skipped" in capsys.readouterr().out
    bad = DATA / "ranked_mixed.jsonl"
    assert cli.main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "6 records, 3 valid, 3 skipped" in out
    assert f"{bad}:4: field 'labels[1].labeler'" in out and f"{bad}:6: field 'completions'" in out
    assert cli.main(["validate", "--strict", str(bad)]) == 1
    assert f"{bad}:2: record: invalid JSON" in capsys.readouterr().err
    assert cli.main(["validate", "--kind", "binary", str(DATA / "binary_bad_thumbs.jsonl")]) == 1


def test_stats_prints_counts_and_agreement_table(tmp_path, capsys):
    path = _crowd_file(tmp_path)
    assert cli.main(["stats", str(path), "--min-agreement", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 3" in out and "labels: 12 from 4 labelers" in out
    assert "labels with ties: 0" in out and "flags (F) in labels: 0" in out
    assert "excluded labelers: rev" in out
    table = out.split("worst at the bottom):\n")[1].strip().splitlines()
    assert table[0].split()[:4] == ["labeler", "prompts", "pairs", "agreement"]
    assert table[-1].split()[:4] == ["rev", "3", "18", "0.000"] and table[-1].endswith("yes")
    assert cli.main(["stats", str(DATA / "ranked_good.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "flags (F) in labels: 2" in out and "criteria: helpfulness (2)" in out
    assert cli.main(["stats", str(DATA / "binary_good.jsonl")]) == 0
    assert "records: 7 (5 up, 2 down)" in capsys.readouterr().out
    assert cli.main(["stats", str(DATA / "pairwise_good.jsonl")]) == 0
    assert "pairs with a margin: 1" in capsys.readouterr().out


def test_stats_strict_and_lenient(capsys):
    bad = str(DATA / "ranked_mixed.jsonl")
    assert cli.main(["stats", bad]) == 1
    assert "invalid JSON" in capsys.readouterr().err
    assert cli.main(["stats", "--lenient", bad]) == 0
    captured = capsys.readouterr()
    assert "3 skipped" in captured.err and "prompts: 3" in captured.out


@pytest.mark.parametrize("ext", [".parquet", ".jsonl"])
def test_to_pairs(tmp_path, capsys, ext):
    out = tmp_path / f"pairs{ext}"
    assert cli.main(["to-pairs", str(_crowd_file(tmp_path)), "--out", str(out),
                     "--min-agreement", "0.5", "--method", "copeland"]) == 0
    text = capsys.readouterr().out
    assert "pairs: 18" in text and "excluded_labelers: rev" in text
    ds = fb.load_pairs(out)
    assert len(ds) == 18 and set(ds["agreement"]) == {1.0}


def test_to_pairs_binary_and_pairwise(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    assert cli.main(["to-pairs", str(DATA / "binary_good.jsonl"), "--out", str(out)]) == 0
    assert "tied_votes: 1" in capsys.readouterr().out
    assert fb.load_pairs(out)["chosen"] == ["a furry animal"]
    out = tmp_path / "p.parquet"
    assert cli.main(["to-pairs", str(DATA / "pairwise_good.jsonl"), "--out", str(out)]) == 0
    assert fb.load_pairs(out)["prompt"][1] == "Human: Is a dog furry?\n\nAssistant:"


def test_subcommands_register_on_a_parent_parser(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="rlhf-jax")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_feedback_subcommands(sub)
    args = parser.parse_args(["feedback", "validate", str(DATA / "ranked_good.jsonl")])
    assert args.command == "feedback" and args.func(args) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["feedback", "frobnicate"])


def test_module_runs_standalone_without_torch():
    code = ("import sys, rlhf_jax.feedback, rlhf_jax.feedback.cli\n"
            "assert 'torch' not in sys.modules, 'rlhf_jax.feedback imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax.feedback.cli", "validate",
                           str(DATA / "ranked_mixed.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 1 and "3 skipped" in proc.stdout


def test_labeler_instructions():
    text = fb.labeler_instructions("harmlessness")
    assert text.startswith("# Labeling instructions: rank the completions by harmlessness")
    assert "{criterion}" not in text and fb.LABELER_INSTRUCTIONS_ID in text
    for words in ("correctness", "informativeness", "same rank", "rarely", "mark it F",
                  "## Example"):
        assert words in text
    assert "{criterion}" in fb.labeler_instructions(None)
