"""Algorithms as ``(init, step)`` pairs of pure functions (SFT, reward model, PPO), the one loop
that runs them (:func:`fit`: logging, checkpoints, resume, stop rules, the non-finite policy) and
thin drivers (:func:`train_sft`, :func:`train_reward_model`, :func:`train_ppo`)."""

from rlhf_jax.train.algorithm import Algorithm
from rlhf_jax.train.batching import batch_indices, trim_padding
from rlhf_jax.train.checkpoints import (RESUMABLE_CHANGES, Checkpoints, all_finite_leaves, restore_raw, run_record,
                                        tree_fingerprint)
from rlhf_jax.train.errors import CheckpointError, NonFiniteError, RunError
from rlhf_jax.train.fit import FitContext, FitResult, fit
from rlhf_jax.train.optim import OptimConfig, guarded_update, make_optimizer
from rlhf_jax.train.ppo import (Experience, PPOBatch, PPOConfig, PPOResult, PPORun, PPOState, advantages_from_arrays,
                                make_ppo, make_ppo_experience, metric_stop, prepare_ppo, train_ppo)
from rlhf_jax.train.reward import (RewardConfig, RewardResult, encode_preferences, make_reward, reward_loss,
                                   train_reward_ensemble, train_reward_model)
from rlhf_jax.train.run import MetricsLogger, RunConfig, plot_curves, read_metrics
from rlhf_jax.train.sft import SFTBatch, SFTConfig, SFTResult, encode_sft, lm_loss, make_sft, sft_eval_sums, train_sft
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.trainable import init_trainable

__all__ = [
    "Algorithm", "CheckpointError", "Checkpoints", "Experience", "FitContext", "FitResult", "MetricsLogger",
    "NonFiniteError", "OptimConfig", "PPOBatch", "PPOConfig", "PPOResult", "PPORun", "PPOState", "RESUMABLE_CHANGES",
    "RewardConfig", "RewardResult", "RunConfig", "RunError", "SFTBatch", "SFTConfig", "SFTResult", "TrainState",
    "advantages_from_arrays", "all_finite_leaves", "batch_indices", "encode_preferences", "encode_sft", "fit",
    "guarded_update", "init_trainable", "lm_loss", "make_optimizer", "make_ppo", "make_ppo_experience", "make_reward",
    "make_sft", "metric_stop", "plot_curves", "prepare_ppo", "read_metrics", "restore_raw", "reward_loss", "run_record", "sft_eval_sums",
    "train_ppo", "train_reward_ensemble", "train_reward_model", "train_sft", "tree_fingerprint", "trim_padding",
]
