"""Smoke test of experiments/bench_grpo.py: ``--tiny`` runs our GRPO against TRL 1.12's GRPOTrainer
end to end (width 32, one block, a warm-up and one measured step per side) and prints its table,
ratio line and time split; ``--gpu --tiny`` runs the accelerator mode's code path on the CPU.
Numbers are not checked (2 shared CPU cores), only that every side ran, the same steps, and that
both generated exactly the completion length asked for."""

from __future__ import annotations

import math
import re

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from tests.test_bench_smoke import _load, world_dir  # noqa: E402,F401  (world_dir is a fixture)


def test_bench_grpo_tiny(world_dir, capsys):
    out = _load("bench_grpo").main(["--tiny", "--variants", "trl_lora,lora", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert set(out["eps"]) == {"trl_lora", "lora"} and all(math.isfinite(v) and v > 0 for v in out["eps"].values())
    assert len(re.findall(r"^ratio GRPO episodes/s, [^:]+: [0-9.]+x TRL", text, flags=re.M)) == 1
    assert "| TRL 1.12 GRPOTrainer + PEFT LoRA" in text and "| ours, LoRA" in text
    assert "where the time goes, lora vs trl_lora: generation" in text
    assert "note:" not in text  # TRL generated exactly the 4 tokens asked for (ours: eos_ids=())
    steps = [line for line in text.splitlines() if line.startswith("  TRL 1.12") or line.startswith("  ours")]
    assert [len(line.split(":")[-1].split()) for line in steps] == [2, 2]  # warm-up + 1 measured step each


@pytest.mark.slow
def test_bench_grpo_gpu_mode_runs_on_cpu_when_tiny(world_dir, capsys):
    out = _load("bench_grpo").main(["--gpu", "--tiny", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert out["eps"] > 0 and "bfloat16, LoRA r=4" in text and "ratio gpu GRPO:" in text
