"""Critic-free RL on one frozen base: GRPO, RLOO and REINFORCE++ as ``(init, step)`` pairs (the
reference is the base with the adapter off; no critic), their configs and the drivers that run
them on prompts."""

from rlhf_jax.train.critic_free.algorithm import (GroupBatch, GroupExperience, completion_hidden, make_grpo,
                                                  make_reinforce_pp, make_rloo)
from rlhf_jax.train.critic_free.config import CriticFreeConfig, GRPOConfig, ReinforcePPConfig, RLOOConfig
from rlhf_jax.train.critic_free.driver import (CriticFreeResult, CriticFreeRun, prepare_critic_free, prepare_grpo,
                                               prepare_reinforce_pp, prepare_rloo, train_critic_free, train_grpo,
                                               train_reinforce_pp, train_rloo)

__all__ = [
    "CriticFreeConfig", "CriticFreeResult", "CriticFreeRun", "GRPOConfig", "GroupBatch", "GroupExperience",
    "RLOOConfig", "ReinforcePPConfig", "completion_hidden", "make_grpo", "make_reinforce_pp", "make_rloo",
    "prepare_critic_free", "prepare_grpo", "prepare_reinforce_pp", "prepare_rloo", "train_critic_free", "train_grpo",
    "train_reinforce_pp", "train_rloo",
]
