"""The main job: the seeds' whole RLHF pipeline on the built-in toy world (``rlhf-jax demo``)."""

from rlhf_jax.demo.config import DemoConfig
from rlhf_jax.demo.pipeline import RewardStage, gold_scorers, run_demo
from rlhf_jax.demo.plots import plot_hacking, plot_overoptimisation

__all__ = ["DemoConfig", "RewardStage", "gold_scorers", "plot_hacking", "plot_overoptimisation", "run_demo"]
