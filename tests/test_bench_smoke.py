"""Smoke test of the trainer benchmarks (experiments/bench_{sft,reward,ppo,dpo}.py): each runs end to end
against TRL on a tiny model (``--tiny``: width 32, one block, a step or two per side) and prints its
table and ratio lines. Numbers are not checked (2 shared CPU cores), only that every side ran, the
same number of steps, and the accelerator mode's code path on the CPU (``--gpu --tiny``)."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("torch")

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bench_world"))


def _ratios(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"^ratio [^:]+: ([0-9.]+)x TRL", text, flags=re.M)]


def test_bench_sft_tiny(world_dir, capsys):
    out = _load("bench_sft").main(["--tiny", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert set(out["tps"]) == {"trl", "full", "lora"}
    assert all(math.isfinite(v) and v > 0 for v in out["tps"].values())
    assert "| TRL 1.12 SFTTrainer" in text and len(_ratios(text)) == 2


def test_bench_reward_tiny(world_dir, capsys):
    out = _load("bench_reward").main(["--tiny", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert set(out["pps"]) == {"trl", "full", "lora"}
    assert "| TRL 1.12 RewardTrainer" in text and len(_ratios(text)) == 2


def test_bench_ppo_tiny(world_dir, capsys):
    # our LoRA run against TRL, in one process; the memory children are left to the real runs
    out = _load("bench_ppo").main(["--tiny", "--no-memory", "--variants", "lora", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert set(out["eps"]) == {"trl", "lora"}
    # both sides generated exactly the 4 tokens asked for (no early EOS on either side)
    rows = [line for line in text.splitlines() if line.startswith("| TRL 1.12 PPOTrainer") or
            line.startswith("| ours, LoRA")]
    assert len(rows) == 2 and all(r.split("|")[7].strip() == "4.0" for r in rows)
    assert len(_ratios(text)) == 1


def test_bench_gpu_mode_runs_on_cpu_when_tiny(world_dir, capsys):
    _load("bench_sft").main(["--gpu", "--tiny", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert "bfloat16, full fine-tuning" in text and "MFU" in text


def test_profile_steps_tiny(capsys):
    out = _load("profile_steps").main(["--tiny"])
    text = capsys.readouterr().out
    assert [r[0] for r in out["ppo"]] == ["PPO lora", "PPO full"]
    assert [r[0] for r in out["train"]] == ["SFT full", "SFT lora", "reward full", "reward lora"]
    assert "| PPO lora |" in text and "host->device" in text


def test_bench_dpo_tiny(world_dir, capsys):
    out = _load("bench_dpo").main(["--tiny", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert set(out["pps"]) == {"trl_full", "full", "trl_lora", "lora", "cached"}
    assert all(math.isfinite(v) and v > 0 for v in out["pps"].values())
    assert "| TRL 1.12 DPOTrainer, full fine-tuning" in text and len(_ratios(text)) == 4


def test_bench_reward_long_prompt_tiny(world_dir, capsys):
    out = _load("bench_reward").main(["--tiny", "--long-prompt", "--world-dir", world_dir])
    text = capsys.readouterr().out
    assert set(out["pps"]) == {"trl", "full", "lora"}
    assert "the prompt once" in text and len(re.findall(r"^ratio reward long-prompt", text, flags=re.M)) == 2
