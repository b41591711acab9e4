"""RLOO and REINFORCE++ trainers (the KL penalty in the reward): the verifiable reward rises on the
count-the-token task from step 0 and KL is exactly 0 at step 0. RLOO runs 2 iterations of 2
minibatches per step (recomputed old log-probs, importance ratios away from 1, TRL's sequence-level
loss); REINFORCE++ one sample per prompt."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.train import OptimConfig, ReinforcePPConfig, RLOOConfig, RunConfig, train_reinforce_pp, train_rloo
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer


def TARGET(prompts, completions):
    """The count-the-token task: 1/8 per w7 in the completion."""
    return [c.split().count("w7") / 8 for c in completions]


COMMON = dict(sampling=SamplingConfig(max_new_tokens=8), policy_lora=LoraConfig(rank=4, alpha=8.0),
              optim=OptimConfig(learning_rate=3e-3), run=RunConfig(max_steps=12, progress=False))


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    return cfg, tiny_base(cfg), tiny_tokenizer()


def _rises(history):
    scores = [r["score"] for r in history]
    # step 0 samples from the base (w7 in ~1 token of 10-50); each extra w7 adds 0.125
    assert scores[0] < 0.2
    assert np.mean(scores[-3:]) > scores[0] + 0.15, scores


def test_rloo_raises_the_reward_with_several_updates_per_step(setup):
    config = RLOOConfig(batch_size=4, group_size=4, kl_coef=0.01, num_iterations=2, mini_batch_size=8, **COMMON)
    res = train_rloo(*setup, tiny_prompts(), TARGET, config)
    _rises(res.history)
    assert res.history[0]["kl"] == 0.0  # recomputed old log-probs vs the base's: the same numbers
    assert all(r["updates"] == 4 for r in res.history)
    # later minibatch updates see a policy moved by the earlier ones: ratios leave 1
    assert max(r["ratio_max"] for r in res.history) > 1.0
    assert all(r["skipped"] == 0 for r in res.history)


def test_reinforce_pp_raises_the_reward(setup):
    config = ReinforcePPConfig(batch_size=16, group_size=1, **COMMON)
    res = train_reinforce_pp(*setup, tiny_prompts(), TARGET, config)
    _rises(res.history)
    assert res.history[0]["kl"] == 0.0 and res.history[-1]["kl"] > 0.0
    assert "zero_std_frac" not in res.history[0]  # groups of one: nothing to count


def test_configs_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="group_size"):
        RLOOConfig(group_size=1)
    with pytest.raises(ValueError, match="group_baseline"):
        ReinforcePPConfig(group_baseline=True)
    with pytest.raises(ValueError, match="filter_zero_std"):
        ReinforcePPConfig(filter_zero_std=True)
    with pytest.raises(ValueError, match="loss_type"):
        ReinforcePPConfig(loss_type="sequence")  # per-token advantages have no sequence ratio
    assert RLOOConfig().loss_type == "sequence" and ReinforcePPConfig(group_size=4, group_baseline=True).group_size == 4
