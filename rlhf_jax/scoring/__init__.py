"""Rewards: reward models (scores, normalisation, save/load, the critic built from them) and the
scorer protocol every RL algorithm's driver takes (reward models, Python functions, weighted
sums, reward-model ensembles scored in one pass and the over-optimisation monitor). Sits below
``train/`` and ``evaluate/``; knows nothing of trainers."""

from rlhf_jax.scoring.functions import (exact_match, length_target, normalize_answer, overlong_penalty, regex_match,
                                        torch_classifier)
from rlhf_jax.scoring.hf_classifier import (HFClassifier, HFClassifierScorer, classifier_architecture,
                                            hf_classifier_scores, load_hf_classifier)
from rlhf_jax.scoring.ensemble import (EnsembleScorer, GapMonitor, ensemble_raw_scores, ensemble_scores,
                                       penalised_mean)
from rlhf_jax.scoring.io import load_reward_model, model_kind, save_reward_model
from rlhf_jax.scoring.loading import build_scorer, load_function, load_reward_scorer, reward_folder_kind
from rlhf_jax.scoring.policy_samples import normalize_on_policy_samples
from rlhf_jax.scoring.reward_model import (RewardModel, copy_tree, critic_from_reward, fold_head, hidden_states,
                                           normalize_on_samples, normalize_reward_model, raw_scores, reward_scores)
from rlhf_jax.scoring.scorers import (ClippedScorer, Completions, FunctionScorer, ModelScorer, Scorer, TextFn, WeightedScorer,
                                      as_scorer)

__all__ = [
    "ClippedScorer", "Completions", "FunctionScorer", "HFClassifier", "HFClassifierScorer", "ModelScorer", "RewardModel", "Scorer",
    "TextFn", "WeightedScorer", "as_scorer", "build_scorer", "classifier_architecture", "copy_tree",
    "critic_from_reward", "fold_head", "hf_classifier_scores", "hidden_states", "load_function", "load_hf_classifier",
    "load_reward_model", "load_reward_scorer", "model_kind", "normalize_on_policy_samples", "normalize_on_samples",
    "normalize_reward_model", "raw_scores", "reward_folder_kind", "reward_scores", "save_reward_model",
    # verifiable rewards (functions.py)
    "exact_match", "length_target", "normalize_answer", "overlong_penalty", "regex_match", "torch_classifier",
    # ensembles on one base (ensemble.py)
    "EnsembleScorer", "GapMonitor", "ensemble_raw_scores", "ensemble_scores", "penalised_mean",
]
