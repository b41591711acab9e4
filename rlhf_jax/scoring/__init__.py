"""Rewards: reward models (scores, normalisation, save/load, the critic built from them) and the
scorer protocol every RL algorithm's driver takes (reward models, Python functions, weighted
sums, reward-model ensembles scored in one pass and the over-optimisation monitor). Sits below
``train/`` and ``evaluate/``; knows nothing of trainers."""

from rlhf_jax.scoring.ensemble import (EnsembleScorer, GapMonitor, ensemble_raw_scores, ensemble_scores,
                                       penalised_mean)
from rlhf_jax.scoring.io import load_reward_model, model_kind, save_reward_model
from rlhf_jax.scoring.reward_model import (RewardModel, copy_tree, critic_from_reward, fold_head, hidden_states,
                                           normalize_on_samples, normalize_reward_model, raw_scores, reward_scores)
from rlhf_jax.scoring.scorers import (Completions, FunctionScorer, ModelScorer, Scorer, TextFn, WeightedScorer,
                                      as_scorer)

__all__ = [
    "Completions", "EnsembleScorer", "FunctionScorer", "GapMonitor", "ModelScorer", "RewardModel", "Scorer", "TextFn",
    "WeightedScorer", "as_scorer", "copy_tree", "critic_from_reward", "ensemble_raw_scores", "ensemble_scores",
    "fold_head", "hidden_states", "load_reward_model", "model_kind", "normalize_on_samples", "normalize_reward_model",
    "penalised_mean", "raw_scores", "reward_scores", "save_reward_model",
]
