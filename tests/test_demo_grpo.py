"""``rlhf-jax demo --quick --grpo``: the miniature demo with a GRPO run next to PPO's (same reward
model, KL coefficient, steps and episodes per step), evaluated with the other models and compared
with PPO in the report."""

import json
import os

import numpy as np
import pytest

from rlhf_jax.cli import main
from rlhf_jax.demo import DemoConfig


@pytest.mark.slow
def test_demo_runs_grpo_next_to_ppo_and_compares_them(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--quick", "--grpo", "--out", out, "--no-progress"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    quick = DemoConfig.quick()
    assert summary["miniature"] and summary["config"]["grpo_steps"] == quick.ppo_steps
    assert set(summary["evaluation"]) == {"sft", "ppo", "ppo_no_kl", "grpo"}
    assert all(np.isfinite(v) for v in summary["evaluation"]["grpo"].values())
    rows = [json.loads(line) for line in open(os.path.join(out, "grpo", "metrics.jsonl"))]
    assert len(rows) == quick.ppo_steps and {"score", "kl", "gold", "zero_std_frac"} <= set(rows[0])
    assert rows[0]["kl"] == 0.0  # the policy adapter starts at B = 0: policy = reference
    report = open(os.path.join(out, "report.md")).read()
    assert "`rlhf-jax demo --quick --grpo --out" in report and "(miniature)" in report
    assert "## GRPO next to PPO" in report and "### PPO (KL) -> GRPO on held-out prompts" in report
    assert "| grpo |" in report  # a row of the before/after table
    assert "] grpo: score" in capsys.readouterr().out  # its stage line


def test_demo_config_checks_the_grpo_group():
    with pytest.raises(ValueError, match="DemoConfig.grpo_group_size must be a divisor of ppo_batch_size = 32"):
        DemoConfig(grpo_steps=2, grpo_group_size=5)
    with pytest.raises(ValueError, match="DemoConfig.grpo_steps must be"):
        DemoConfig(grpo_steps=-1)
