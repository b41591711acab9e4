"""The main job: the seeds' whole RLHF pipeline on the built-in toy world (``rlhf-jax demo``)."""

from rlhf_jax.demo.config import DemoConfig
from rlhf_jax.demo.pipeline import gold_scorers, plot_hacking, run_demo

__all__ = ["DemoConfig", "gold_scorers", "plot_hacking", "run_demo"]
