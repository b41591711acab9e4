"""kill -9 of a training process while it writes checkpoints, then resume: the finished run equals a
straight run bit for bit (the half-written step is detected by its missing or wrong manifest and
the previous one is used)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys
import numpy as np
from rlhf_jax.lora import LoraConfig
from rlhf_jax.train import OptimConfig, RunConfig, SFTConfig, train_sft
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer
out, steps = sys.argv[1], int(sys.argv[2])
P = [f"w{i % 5} w{(i + 1) % 5}" for i in range(40)]
C = [f"w{10 + i % 5} w{10 + (i + 2) % 5} w15" for i in range(40)]
cfg = tiny_config()
rows = [{"prompt": p, "completion": c} for p, c in zip(P, C)]
res = train_sft(cfg, tiny_base(cfg), tiny_tokenizer(), rows, SFTConfig(
    lora=LoraConfig(rank=2, alpha=4.0), batch_size=8, max_length=10, eval_fraction=0.0,
    optim=OptimConfig(learning_rate=1e-2),
    run=RunConfig(max_steps=steps, out_dir=out, progress=False, tensorboard=False, checkpoint_every=1,
                  keep_checkpoints=2)))
np.savez(out + "/final.npz", **{"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p): np.asarray(x)
                                for p, x in __import__("jax").tree_util.tree_flatten_with_path(res.lora.tree)[0]})
json.dump([r["loss"] for r in res.history], open(out + "/losses.json", "w"))
"""


def _start(out: Path, steps: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(steps)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps(out: Path) -> set[str]:
    ck = out / "checkpoints"
    return set(os.listdir(ck)) if ck.is_dir() else set()


@pytest.mark.slow
def test_kill9_during_checkpoint_writes_then_resume_is_bit_identical(tmp_path):
    steps = 12
    straight = _start(tmp_path / "straight", steps)
    assert straight.wait(timeout=600) == 0, straight.stdout.read()[-3000:]
    run = tmp_path / "run"
    kills = 0
    for attempt in range(3):  # three kills, each as a new checkpoint step appears (mid-write)
        proc = _start(run, steps)
        seen = _steps(run)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            now = _steps(run)
            done = [n for n in now if n.isdigit()]
            # once two steps are on disk, kill as soon as orbax starts (or finishes) writing another
            if now != seen and len(done) >= 2 and (run / "checkpoint_manifests").is_dir():
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            seen = now
            time.sleep(0.005)
        proc.wait(timeout=60)
        if (run / "losses.json").exists():
            break
    assert kills >= 1
    final = _start(run, steps)
    out = final.communicate(timeout=600)[0]
    assert final.returncode == 0, out[-3000:]
    assert "resuming from step" in out
    a, b = np.load(tmp_path / "straight" / "final.npz"), np.load(run / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert json.load(open(tmp_path / "straight" / "losses.json")) == json.load(open(run / "losses.json"))
