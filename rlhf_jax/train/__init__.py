"""Algorithms as ``(init, step)`` pairs of pure functions (SFT, reward model, PPO, DPO), the one loop
that runs them (:func:`fit`: logging, checkpoints, resume, stop rules, the non-finite policy) and
thin drivers (:func:`train_sft`, :func:`train_reward_model`, :func:`train_ppo`, :func:`train_dpo`; critic-free
:func:`train_grpo`, :func:`train_rloo`, :func:`train_reinforce_pp`)."""

from rlhf_jax.train.algorithm import Algorithm
from rlhf_jax.train.batching import batch_indices, trim_padding
from rlhf_jax.train.critic_free import (CriticFreeConfig, CriticFreeResult, CriticFreeRun, GRPOConfig, GroupBatch,
                                        ReinforcePPConfig, RLOOConfig, make_grpo, make_reinforce_pp, make_rloo,
                                        prepare_critic_free, prepare_grpo, prepare_reinforce_pp, prepare_rloo,
                                        train_critic_free, train_grpo, train_reinforce_pp, train_rloo)
from rlhf_jax.train.checkpoints import (RESUMABLE_CHANGES, Checkpoints, all_finite_leaves, restore_raw, run_record,
                                        tree_fingerprint)
from rlhf_jax.train.dpo import (DPOBatch, DPOConfig, DPOResult, encode_dpo_data, make_dpo, precompute_reference,
                                train_dpo)
from rlhf_jax.train.errors import CheckpointError, NonFiniteError, RunError
from rlhf_jax.train.fit import FitContext, FitResult, fit
from rlhf_jax.train.optim import OptimConfig, guarded_update, make_optimizer
from rlhf_jax.train.ppo import (Experience, PPOBatch, PPOConfig, PPOResult, PPORun, PPOState, advantages_from_arrays,
                                make_ppo, make_ppo_experience, metric_stop, prepare_ppo, train_ppo)
from rlhf_jax.train.prompt_data import RLPrompts, prepare_prompts
from rlhf_jax.train.reward import (RewardConfig, RewardResult, encode_preferences, make_reward, preference_pairs,
                                   preference_scores, reward_loss, train_reward_ensemble, train_reward_model)
from rlhf_jax.train.run import MetricsLogger, RunConfig, plot_curves, read_metrics
from rlhf_jax.train.sft import (SFTBatch, SFTConfig, SFTResult, encode_sft, layout_examples, lm_loss, make_sft,
                                sft_eval_sums, train_sft)
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.trainable import init_trainable

__all__ = [
    "Algorithm", "CheckpointError", "Checkpoints", "DPOBatch", "DPOConfig", "DPOResult", "Experience", "FitContext",
    "FitResult", "MetricsLogger", "NonFiniteError", "OptimConfig", "PPOBatch", "PPOConfig", "PPOResult", "PPORun",
    "PPOState", "RESUMABLE_CHANGES", "RLPrompts", "RewardConfig", "RewardResult", "RunConfig", "RunError", "SFTBatch",
    "SFTConfig", "SFTResult", "TrainState", "advantages_from_arrays", "all_finite_leaves", "batch_indices",
    "encode_dpo_data", "encode_preferences", "encode_sft", "fit", "guarded_update", "init_trainable", "layout_examples",
    "lm_loss", "make_dpo", "make_optimizer", "make_ppo", "make_ppo_experience", "make_reward", "make_sft",
    "plot_curves", "precompute_reference", "preference_pairs", "preference_scores", "prepare_ppo", "prepare_prompts",
    "read_metrics", "restore_raw", "reward_loss", "run_record", "sft_eval_sums", "train_dpo", "train_ppo",
    "train_reward_model", "train_sft", "tree_fingerprint", "trim_padding",
    # critic-free RL (critic_free/)
    "CriticFreeConfig", "CriticFreeResult", "CriticFreeRun", "GRPOConfig", "GroupBatch", "RLOOConfig",
    "ReinforcePPConfig", "make_grpo", "make_reinforce_pp", "make_rloo", "prepare_critic_free", "prepare_grpo",
    "prepare_reinforce_pp", "prepare_rloo", "train_critic_free", "train_grpo", "train_reinforce_pp", "train_rloo",
    "metric_stop", "train_reward_ensemble",
]
