"""GRPO / RLOO / REINFORCE++ with each group's prompt computed once (``shared_prompt``, the
default) and the LM head over chunks (``logit_chunk``): one step equals the row-by-row,
whole-logit step (parameters after an SGD update, i.e. the gradient, and every metric) on a
rollout with left-padded prompts of different lengths and completions cut to different
lengths; a group whose rows carry different prompts skips the step and is counted."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.lora import LoraConfig, model_variables
from rlhf_jax.rollout import SamplingConfig, cached_sampler, left_pad
from rlhf_jax.train import (GRPOConfig, GroupBatch, OptimConfig, ReinforcePPConfig, RLOOConfig, RunConfig, make_grpo,
                            make_reinforce_pp, make_rloo)
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer

SCORES = jnp.array([1.0, 0.0, 0.5, 0.0, 0.25, 0.5, 0.0, 1.0])


@pytest.fixture(scope="module")
def world():
    """2 prompts (1 and 3 tokens, left padded) x 4 completions sampled from the base, cut to
    lengths 8, 3, 5, 8, 2, 8, 6, 1."""
    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg)
    prompts = left_pad([tok("w1")["input_ids"], tok("w3 w4 w5")["input_ids"]], pad_id=0)
    tokens, mask = (np.repeat(np.asarray(x), 4, axis=0) for x in (prompts.tokens, prompts.mask))
    sampler = cached_sampler(cfg, None, SamplingConfig(max_new_tokens=8, pad_id=0, eos_ids=()))
    ro = sampler(model_variables(base, None), tokens, mask, jax.random.PRNGKey(3))
    lengths = jnp.array([8, 3, 5, 8, 2, 8, 6, 1])
    rmask = (jnp.arange(8)[None] < lengths[:, None]).astype(jnp.int32)
    ro = ro._replace(response_mask=rmask, lengths=lengths, eos_reached=lengths < 8, logprobs=ro.logprobs * rmask,
                     attention_mask=jnp.concatenate([ro.attention_mask[:, :-8], rmask], axis=1))
    return cfg, base, ro


def _start(make, cfg, base, config):
    algo = make(cfg, optax.sgd(1.0), config)
    state = algo.init(jax.random.PRNGKey(0), base)
    # a non-zero adapter, so the policy differs from the reference (KL, ratios != 1)
    state = state._replace(params=jax.tree_util.tree_map(
        lambda x: 0.05 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype), state.params))
    return algo, state


def _run(make, cfg, base, config, batch):
    algo, state = _start(make, cfg, base, config)
    return jax.jit(algo.step)(state, base, batch)


def _max_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))


def _common(**kw):
    return dict(batch_size=2, group_size=4, sampling=SamplingConfig(max_new_tokens=8),
                policy_lora=LoraConfig(rank=4, alpha=8.0), optim=OptimConfig(learning_rate=1.0),
                run=RunConfig(max_steps=1, progress=False), **kw)


CASES = {
    # two updates on the batch: the second sees a changed policy, so old log-probs are recomputed
    "grpo": (make_grpo, GRPOConfig(**_common(kl_coef=0.1, num_iterations=2, old_logprobs="recompute"))),
    "rloo": (make_rloo, RLOOConfig(**_common(kl_coef=0.05))),
    "reinforce_pp": (make_reinforce_pp, ReinforcePPConfig(**_common(kl_coef=0.05, group_baseline=True))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shared_prompt_and_chunked_head_equal_row_wise_whole_logit_step(world, name):
    cfg, base, ro = world
    make, config = CASES[name]
    assert config.grouped_passes
    plain = dataclasses.replace(config, shared_prompt=False, logit_chunk=0)
    assert not plain.grouped_passes
    want_state, want = _run(make, cfg, base, plain, GroupBatch(ro, SCORES))
    # 3 does not divide the 8 positions; GRPO checks the shared prompt alone as well
    for variant in ([dict(logit_chunk=0)] if name == "grpo" else []) + [dict(logit_chunk=3)]:
        state, got = _run(make, cfg, base, dataclasses.replace(config, **variant), GroupBatch(ro, SCORES))
        assert float(got["prompt_mismatch"]) == 0.0 and float(got["skipped"]) == 0.0
        assert _max_diff(state.params, want_state.params) < 2e-5, variant
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=2e-5, atol=2e-6, err_msg=f"{variant} {k}")
    # SGD with learning rate 1: the parameters moved by the gradient, which is not trivially zero
    assert _max_diff(want_state.params, _start(make, cfg, base, config)[1].params) > 1e-4


def test_minibatches_of_whole_groups_only():
    assert GRPOConfig(**_common(mini_batch_size=4)).grouped_passes
    assert not GRPOConfig(**_common(mini_batch_size=2)).grouped_passes  # half groups: row-wise passes
    assert not GRPOConfig(**_common(shared_prompt=False)).grouped_passes
    with pytest.raises(ValueError, match="logit_chunk"):
        GRPOConfig(**_common(logit_chunk=-1))


def test_a_group_with_different_prompts_skips_the_step(world):
    cfg, base, ro = world
    make, config = CASES["grpo"]
    p = ro.tokens.shape[1] - 8
    tokens = ro.tokens.at[5, p - 1].set(ro.tokens[5, p - 1] + 1)  # row 5 (group 1) gets another prompt
    state, m = _run(make, cfg, base, config, GroupBatch(ro._replace(tokens=tokens), SCORES))
    assert float(m["prompt_mismatch"]) == 1.0 and float(m["skipped"]) == 2.0  # both updates skipped
    # row-wise passes need no shared prompt: the same batch trains
    _, m = _run(make, cfg, base, dataclasses.replace(config, shared_prompt=False),
                GroupBatch(ro._replace(tokens=tokens), SCORES))
    assert "prompt_mismatch" not in m and float(m["skipped"]) == 0.0
