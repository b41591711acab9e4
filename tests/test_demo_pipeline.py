"""A miniature of the demo (every stage, tiny sizes) and the CLI driving each stage on its files."""

import json
import os

import numpy as np
import pytest

from rlhf_jax.cli import main
from rlhf_jax.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    summary = run_demo(DemoConfig.quick(), out, progress=False)
    return out, summary


def test_every_stage_connects_and_writes_its_files(demo):
    out, summary = demo
    for rel in ["world/tokenizer/tokenizer.json", "sft/metrics.jsonl", "sft/sft_curves.png", "feedback/ranked.jsonl",
                "feedback/pairs.parquet", "feedback/stats.txt", "reward/model/reward_model.safetensors",
                "reward/model/reward_config.json", "ppo/metrics.jsonl", "ppo/ppo_curves.png", "ppo_no_kl/metrics.jsonl",
                "reward_hacking.png", "overoptimisation.png", "reward/member_3/model/reward_config.json",
                "eval/eval.json", "eval/report.md", "eval/eval.png",
                "export/ppo_policy/model.safetensors", "export/sft/config.json", "report.md", "summary.json"]:
        assert os.path.exists(os.path.join(out, rel)), rel
    assert len(summary["claims"]) == 11 and all(isinstance(c["pass"], bool) for c in summary["claims"])
    ev = summary["evaluation"]
    assert set(ev) == {"sft", "ppo", "ppo_no_kl"}
    assert ev["sft"]["kl"] == 0.0  # the reference against itself
    for model in ev.values():
        assert all(np.isfinite(v) for v in model.values())
    report = open(os.path.join(out, "report.md")).read()
    assert "## Claims" in report and "labeler-4" in report
    ppo_rows = [json.loads(line) for line in open(os.path.join(out, "ppo", "metrics.jsonl"))]
    assert {"score", "kl", "gold", "beta", "overopt_gap", "overopt_gap/held_out"} <= set(ppo_rows[0])
    # the default demo: 2 optimised reward models (mean - 0.5 std) and 2 held out for the monitor
    assert [r["role"] for r in summary["reward_models"]] == ["optimised"] * 2 + ["held_out"] * 2


def test_cli_runs_each_stage_on_files(demo, tmp_path):
    out, _ = demo
    model = os.path.join(out, "export", "sft")
    corpus = os.path.join(out, "world", "sft_corpus.jsonl")
    prompts = os.path.join(out, "world", "prompts_train.jsonl")
    small = tmp_path / "sft.jsonl"
    small.write_text("".join(open(corpus).readlines()[:64]))
    assert main(["sft", "--model", model, "--data", str(small), "--out", str(tmp_path / "sft"), "--append_eos", "false",
                 "--run.max_steps", "2", "--batch_size", "8", "--max_length", "48", "--lora.rank", "2",
                 "--run.progress", "false", "--run.checkpoint_every", "2"]) == 0
    assert os.path.exists(tmp_path / "sft" / "model" / "model.safetensors")
    assert json.load(open(tmp_path / "sft" / "config.json"))["lora"]["rank"] == 2
    assert main(["reward", "--model", model, "--pairs", os.path.join(out, "feedback", "pairs.parquet"),
                 "--out", str(tmp_path / "rm"), "--run.max_steps", "2", "--batch_size", "8", "--max_length", "48",
                 "--normalize-samples", "8", "--max-new-tokens", "8", "--run.progress", "false"]) == 0
    assert main(["ppo", "--model", model, "--reward", str(tmp_path / "rm" / "reward_model"), "--prompts", prompts,
                 "--prompt-field", "text", "--out", str(tmp_path / "ppo"), "--run.max_steps", "1", "--batch_size", "8",
                 "--mini_batch_size", "4", "--sampling.max_new_tokens", "8", "--run.progress", "false",
                 "--run.checkpoint_every", "1"]) == 0
    assert os.path.exists(tmp_path / "ppo" / "policy_adapter" / "adapter_config.json")
    assert main(["export", "--model", model, "--run", str(tmp_path / "ppo"), "--stage", "ppo", "--format", "peft",
                 "--out", str(tmp_path / "exported")]) == 0
    assert os.path.exists(tmp_path / "exported" / "adapter_model.safetensors")
    assert main(["export", "--model", model, "--run", str(tmp_path / "sft"), "--stage", "sft",
                 "--out", str(tmp_path / "sft_hf")]) == 0
    assert main(["evaluate", "--model", model, "--policy", str(tmp_path / "ppo" / "policy"), "--prompts", prompts,
                 "--prompt-field", "text", "--reward", str(tmp_path / "rm" / "reward_model"), "--out",
                 str(tmp_path / "eval"), "--samples", "1", "--max-prompts", "8", "--max-new-tokens", "8"]) == 0
    assert os.path.exists(tmp_path / "eval" / "report.md")


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    text = capsys.readouterr().out
    assert "--optim.learning_rate" in text and "KL penalty coefficient" in text and "--kl_estimator" in text
