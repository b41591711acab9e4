"""The demo's figures over PPO steps: reward hacking (proxy vs gold) and the over-optimisation
monitor (optimised vs held-out reward models, their gap, and the gold score it stands in for)."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values, window: int = 5) -> np.ndarray:
    """Trailing mean over ``window`` steps (fewer at the start): ``out[i] = mean(values[i-w+1 : i+1])``."""
    x = np.asarray(values, np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def plot_hacking(histories: dict[str, list[dict]], path: str) -> str:
    """Proxy reward (the reward model) against the gold rubric over PPO steps, per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    for name, h in histories.items():
        steps = [r["step"] for r in h]
        for ax, key in zip(axes, ("score", "gold", "kl", "repetition")):
            ax.plot(steps, [r[key] for r in h], label=name, lw=1.5)
            ax.set_title({"score": "proxy reward (reward model)", "gold": "gold rubric (hidden)",
                          "kl": "KL(policy || reference) per sequence",
                          "repetition": "repeated words per completion (hidden)"}[key])
            ax.set_xlabel("PPO step")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_overoptimisation(histories: dict[str, list[dict]], path: str, *, key: str = "overopt_gap",
                          threshold: float | None = None, window: int = 5) -> str:
    """Per run, over PPO steps: the optimised reward models' mean score and the held-out ones'
    (dashed), their gap (the monitor; ``threshold`` drawn when given) and the hidden gold score;
    thin lines per step, thick the ``window``-step trailing mean."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for i, (name, h) in enumerate(histories.items()):
        if not h or key not in h[0]:
            continue
        color = f"C{i}"
        steps = [r["step"] for r in h]
        opt, held = [r[f"{key}/optimised"] for r in h], [r[f"{key}/held_out"] for r in h]
        axes[0].plot(steps, smooth(opt, window), color=color, lw=1.8, label=f"{name}: optimised")
        axes[0].plot(steps, smooth(held, window), color=color, lw=1.8, ls="--", label=f"{name}: held out")
        for ax, k in ((axes[1], key), (axes[2], "gold")):
            v = [r[k] for r in h]
            ax.plot(steps, v, color=color, lw=0.6, alpha=0.4)
            ax.plot(steps, smooth(v, window), color=color, lw=1.8, label=name)
    if threshold is not None:
        axes[1].axhline(threshold, color="k", ls=":", lw=1, label=f"stop rule ({threshold:g})")
    for ax, title in zip(axes, ("reward: optimised vs held-out reward models",
                                "monitor: optimised - held out (no gold)",
                                "gold rubric (hidden)")):
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
