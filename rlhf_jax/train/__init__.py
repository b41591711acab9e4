"""Trainers: SFT, reward model, PPO. Each builds an unjitted step from the library's losses,
jits it once, and loops; state is a NamedTuple, configs are frozen dataclasses."""

from rlhf_jax.train.ppo import (Experience, PPOConfig, PPOResult, PPOState, PPOTrainer, make_ppo_experience,
                               make_ppo_step, policy_variables)
from rlhf_jax.train.reward import (RewardConfig, RewardModel, RewardResult, load_reward_model, make_reward_step,
                                   normalize_reward_model, raw_scores, save_reward_model, train_reward_model)
from rlhf_jax.train.reward_fn import ModelReward, TextReward
from rlhf_jax.train.run import Checkpoints, MetricsLogger, RunConfig, plot_curves
from rlhf_jax.train.sft import SFTConfig, SFTData, SFTResult, encode_sft, lm_loss, make_sft_step, train_sft
from rlhf_jax.train.state import (OptimConfig, TrainState, batch_indices, guarded_update, init_state, make_optimizer,
                                  trim_padding)

__all__ = [
    "Checkpoints", "Experience", "MetricsLogger", "ModelReward", "OptimConfig", "PPOConfig", "PPOResult",
    "PPOState", "PPOTrainer", "RewardConfig", "RewardModel", "RewardResult", "RunConfig", "SFTConfig",
    "SFTData", "SFTResult", "TextReward", "TrainState", "batch_indices", "encode_sft", "guarded_update",
    "init_state", "lm_loss", "load_reward_model", "make_optimizer", "make_ppo_experience", "make_ppo_step",
    "make_reward_step", "make_sft_step", "normalize_reward_model", "plot_curves", "policy_variables", "raw_scores",
    "save_reward_model", "train_reward_model", "train_sft", "trim_padding",
]
