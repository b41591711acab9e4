"""Smoke test of the packing benchmark (``experiments/bench_sft.py --packing``): ours packed, ours
unpacked and TRL's packed SFTTrainer run in one process on a tiny model and print their rows.
Numbers are not checked (2 shared CPU cores), only that each side ran and the packed rows are
full."""

import math

import pytest

from tests.test_bench_smoke import _load, _ratios

pytest.importorskip("trl")
pytest.importorskip("torch")


def test_bench_sft_packing_tiny(tmp_path, capsys):
    out = _load("bench_sft").main(["--tiny", "--packing", "--world-dir", str(tmp_path / "world")])
    text = capsys.readouterr().out
    assert set(out["tps"]) == {"trl", "unpacked", "packed"}
    assert all(math.isfinite(v) and v > 0 for v in out["tps"].values())
    assert "| TRL 1.12 SFTTrainer, packing=True" in text and "| ours, packing=True" in text
    assert len(_ratios(text)) == 2 and "packed / unpacked (ours)" in text
