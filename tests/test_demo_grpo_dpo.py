"""``rlhf-jax demo --quick --grpo --dpo``: the miniature demo with a GRPO run next to PPO's (same
reward model, KL coefficient, steps and episodes per step) and a DPO run on the labelers' pairs (as
many steps as the reward model), both evaluated with the other models and compared with PPO in the
report."""

import json
import os

import numpy as np
import pytest

from rlhf_jax.cli import main
from rlhf_jax.demo import DemoConfig


@pytest.mark.slow
def test_demo_runs_grpo_and_dpo_next_to_ppo_and_compares_them(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--quick", "--grpo", "--dpo", "--out", out, "--no-progress"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    quick = DemoConfig.quick()
    assert summary["miniature"] and summary["config"]["grpo_steps"] == quick.ppo_steps
    assert summary["config"]["dpo_steps"] == quick.reward_steps
    assert set(summary["evaluation"]) == {"sft", "ppo", "ppo_no_kl", "grpo", "dpo"}
    assert all(np.isfinite(v) for m in ("grpo", "dpo") for v in summary["evaluation"][m].values())
    rows = [json.loads(line) for line in open(os.path.join(out, "grpo", "metrics.jsonl"))]
    assert len(rows) == quick.ppo_steps and {"score", "kl", "gold", "zero_std_frac"} <= set(rows[0])
    assert rows[0]["kl"] == 0.0  # the policy adapter starts at B = 0: policy = reference
    dpo_rows = [json.loads(line) for line in open(os.path.join(out, "dpo", "metrics.jsonl"))]
    assert len([r for r in dpo_rows if "loss" in r]) == quick.reward_steps
    assert dpo_rows[0]["logratio"] == 0.0  # B = 0: the policy is the reference at step 0
    assert 0.0 <= summary["dpo_eval"]["eval_accuracy"] <= 1.0 and np.isfinite(summary["dpo_eval"]["eval_margin"])
    report = open(os.path.join(out, "report.md")).read()
    assert "`rlhf-jax demo --quick --grpo --dpo --out" in report and "(miniature)" in report
    assert "## GRPO next to PPO" in report and "### PPO (KL) -> GRPO on held-out prompts" in report
    assert "## DPO next to PPO" in report and "### PPO (KL) -> DPO on held-out prompts" in report
    assert "| grpo |" in report and "| dpo |" in report  # rows of the before/after table
    printed = capsys.readouterr().out
    assert "] grpo: score" in printed and "] dpo: loss" in printed  # their stage lines


def test_demo_config_checks_the_grpo_group():
    with pytest.raises(ValueError, match="DemoConfig.grpo_group_size must be a divisor of ppo_batch_size = 32"):
        DemoConfig(grpo_steps=2, grpo_group_size=5)
    with pytest.raises(ValueError, match="DemoConfig.grpo_steps must be"):
        DemoConfig(grpo_steps=-1)


def test_demo_config_checks_the_dpo_run():
    with pytest.raises(ValueError, match="DemoConfig.dpo_steps must be"):
        DemoConfig(dpo_steps=-1)
    with pytest.raises(ValueError, match="DemoConfig.dpo_beta must be"):
        DemoConfig(dpo_beta=0.0)
