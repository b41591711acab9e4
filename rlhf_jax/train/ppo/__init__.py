"""PPO with a KL penalty to a frozen reference, on one frozen base: the config, the experience
pass, the ``(init, step)`` pair and the driver that runs it on prompt texts."""

from rlhf_jax.train.ppo.algorithm import PPOState, kl_controller, make_ppo
from rlhf_jax.train.ppo.config import PPOConfig
from rlhf_jax.train.ppo.driver import (Monitor, PPOResult, PPORun, metric_stop, prepare_ppo, resolve_sampling,
                                      threshold_stop, train_ppo)
from rlhf_jax.train.ppo.experience import (Advantages, Experience, PPOBatch, advantages_from_arrays, critic_values,
                                           make_ppo_experience)

__all__ = [
    "Advantages", "Experience", "Monitor", "PPOBatch", "PPOConfig", "PPOResult", "PPORun", "PPOState",
    "advantages_from_arrays", "critic_values", "kl_controller", "make_ppo", "make_ppo_experience", "metric_stop",
    "prepare_ppo", "resolve_sampling", "threshold_stop", "train_ppo",
]
