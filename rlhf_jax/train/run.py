"""What every run shares around its step: the run config, metrics to JSONL + TensorBoard, a
progress bar and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np

from rlhf_jax.config_checks import at_least, in_range, multiple_of, one_of, positive
from rlhf_jax.sharding import MeshConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where a run writes, how often it logs and checkpoints."""

    out_dir: str | None = None
    """Folder for metrics (``metrics.jsonl``, TensorBoard events), plots and checkpoints;
    ``None``: nothing written."""
    seed: int = 0
    """Seed of the run key and of the data order."""
    max_steps: int = 100
    """Stop after this many updates."""
    checkpoint_every: int = 0
    """Save the full training state every N steps (0: never)."""
    keep_checkpoints: int = 2
    """Keep the last K checkpoints."""
    resume: str = "auto"
    """What to do when ``out_dir`` already holds checkpoints: ``"auto"`` resumes from the newest
    intact one only when the recorded config (but for the fields of
    :data:`rlhf_jax.train.checkpoints.RESUMABLE_CHANGES`), base model and data match, and refuses
    naming the differences otherwise; ``"never"`` starts afresh (the old checkpoints are removed);
    ``"force"`` resumes whatever changed (the differences are printed)."""
    max_skipped_steps: int = 5
    """Stop with an error after this many consecutive steps whose updates were all skipped for a
    non-finite loss, gradient or reward (the last good checkpoint stays)."""
    progress: bool = True
    """Show a progress bar with the key figures."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""
    mesh: MeshConfig | None = None
    """Run on a device mesh (CLI ``--mesh data=2,fsdp=2,tensor=2``): parameters sharded by path
    (:mod:`rlhf_jax.sharding`), batches split over data x fsdp, so batch sizes must be multiples
    of data * fsdp. ``None``: one device."""

    def __post_init__(self):
        at_least(self, "seed", 0, integer=True)
        at_least(self, "max_steps", 1, integer=True)
        at_least(self, "checkpoint_every", 0, integer=True)
        at_least(self, "keep_checkpoints", 1, integer=True)
        one_of(self, "resume", ("auto", "never", "force"))
        at_least(self, "max_skipped_steps", 1, integer=True)

def read_metrics(path: str, *, before: int | None = None) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (those with ``step < before`` when given). A line cut by a
    crash (not valid JSON) is dropped with a notice on stderr, never an error."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad.append(n)
    if bad:
        print(f"{path}: dropped {len(bad)} unreadable line(s) {bad[:5]} (cut by an interrupted run)", file=sys.stderr)
    if before is not None:
        dropped = sum(1 for r in rows if r.get("step", 0) >= before)
        rows = [r for r in rows if r.get("step", 0) < before]
        if dropped:
            print(f"{path}: dropped {dropped} row(s) logged after step {before}, the checkpoint resumed from",
                  file=sys.stderr)
    return rows


class MetricsLogger:
    """Per-step metrics to ``metrics.jsonl`` (and TensorBoard), a tqdm bar, PNG plots at the end."""

    def __init__(self, config: RunConfig, *, name: str, keys: Sequence[str], total: int, initial: int = 0):
        self.config = config
        self.name = name
        self.keys = tuple(keys)
        self.history: list[dict[str, float]] = []
        self._file = self._tb = None
        if config.out_dir:
            os.makedirs(config.out_dir, exist_ok=True)
            path = os.path.join(config.out_dir, "metrics.jsonl")
            if initial == 0 and os.path.exists(path):
                os.remove(path)
            elif initial > 0 and os.path.exists(path):  # resumed: keep the steps before the checkpoint
                self.history = read_metrics(path, before=initial)
                with open(path, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in self.history)
            self._file = open(path, "a")
            if config.tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(config.out_dir, "tensorboard"))
        self._bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=name, file=sys.stderr, dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in jax.device_get(metrics).items()})
        self.history.append(row)
        if self._file:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(f"{self.name}/{k}", v, row["step"])
        if self._bar:
            self._bar.set_postfix({k: f"{row[k]:.4g}" for k in self.keys if k in row}, refresh=False)
            self._bar.update(1)
        return row

    def close(self, plot_keys: Sequence[str] | None = None) -> str | None:
        if self._bar:
            self._bar.close()
        if self._tb:
            self._tb.close()
        if self._file:
            self._file.close()
        if self.config.out_dir and self.history:
            return plot_curves(self.history, plot_keys or self.keys,
                               os.path.join(self.config.out_dir, f"{self.name}_curves.png"), title=self.name)
        return None


def plot_curves(history: Sequence[dict[str, float]], keys: Sequence[str], path: str, *, title: str = "") -> str:
    """One panel per metric over steps, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in history)]
    cols = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in history if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
