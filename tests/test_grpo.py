"""GRPO trainer: the verifiable reward rises on the count-the-token task from step 0, KL is exactly 0
at step 0 and the base is untouched, resume is bit-identical, non-finite scores skip the step
(counted), zero-variance groups are counted and, when filtered, drop out of the loss exactly."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.lora import LoraConfig, model_variables
from rlhf_jax.rollout import SamplingConfig, cached_sampler
from rlhf_jax.train import GRPOConfig, GroupBatch, OptimConfig, RLOOConfig, RunConfig, make_grpo, train_grpo
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer


def TARGET(prompts, completions):
    """The count-the-token task: 1/8 per w7 in the completion."""
    return [c.split().count("w7") / 8 for c in completions]


def _config(steps, out=None, **kw):
    fields = dict(batch_size=4, group_size=4, sampling=SamplingConfig(max_new_tokens=8), kl_coef=0.04,
                  policy_lora=LoraConfig(rank=4, alpha=8.0), optim=OptimConfig(learning_rate=6e-3),
                  run=RunConfig(max_steps=steps, out_dir=None if out is None else str(out), progress=False,
                                checkpoint_every=kw.pop("checkpoint_every", 0)))
    fields.update(kw)
    return GRPOConfig(**fields)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg)
    before = jax.tree_util.tree_map(np.array, base)
    out = tmp_path_factory.mktemp("grpo")
    res = train_grpo(cfg, base, tok, tiny_prompts(), TARGET, _config(12, out / "straight"))
    return cfg, tok, base, before, res, out


def test_score_rises_from_step0(learned):
    *_, res, _ = learned
    scores = [r["score"] for r in res.history]
    # step 0 samples from the base (policy = reference), which emits w7 in ~1 token of 10-50;
    # GRPO must clearly raise the share (each extra w7 per completion adds 0.125)
    assert scores[0] < 0.2
    assert np.mean(scores[-3:]) > scores[0] + 0.2
    assert all(np.isfinite(r["kl"]) for r in res.history) and res.stop_reason == "max_steps"
    assert {"zero_std_frac", "entropy", "clip_frac", "rows_kept", "bad_scores"} <= set(res.history[0])


def test_kl_exactly_zero_at_step0_and_base_untouched(learned):
    _, _, base, before, res, _ = learned
    assert res.history[0]["kl"] == 0.0  # B = 0: the policy's log-probs ARE the reference's
    assert res.history[-1]["kl"] > 0.0
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, base))


def test_resume_is_bit_identical(learned):
    cfg, tok, base, _, res, out = learned
    train_grpo(cfg, base, tok, tiny_prompts(), TARGET, _config(6, out / "resumed", checkpoint_every=6))
    resumed = train_grpo(cfg, base, tok, tiny_prompts(), TARGET, _config(12, out / "resumed", checkpoint_every=6))
    assert [r["step"] for r in resumed.history] == list(range(12))
    for a, b in zip(res.history, resumed.history):
        assert a == b
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.array, res.state.params),
                           jax.tree_util.tree_map(np.array, resumed.state.params))
    assert (out / "straight" / "grpo_curves.png").exists()


def test_non_finite_scores_skip_the_step_and_are_counted(learned):
    cfg, tok, base, *_ = learned

    def bad(prompts, completions):  # one score in 16 is NaN, another beyond reward_bound
        s = TARGET(prompts, completions)
        s[3], s[7] = float("nan"), 1e30
        return s

    res = train_grpo(cfg, base, tok, tiny_prompts(), bad, _config(2))
    assert [r["skipped"] for r in res.history] == [1.0, 2.0]  # one update per step, each skipped
    assert all(r["bad_scores"] == 2.0 for r in res.history)
    tree = res.state.params.tree  # never updated: B is still exactly 0
    assert all(float(jnp.abs(x).max()) == 0.0 for p, x in jax.tree_util.tree_leaves_with_path(tree)
               if p[-1].key == "b")


@pytest.fixture(scope="module")
def rollout(learned):
    """2 prompts x 4 completions sampled from the base, cut to lengths 8, 3, 5, 8, 2, 8, 6, 1."""
    cfg, tok, base, *_ = learned
    ids = tok(["w1 w2", "w3 w4"])["input_ids"]
    tokens = np.repeat(np.array(ids), 4, axis=0)
    sampler = cached_sampler(cfg, None, SamplingConfig(max_new_tokens=8, pad_id=0, eos_ids=()))
    ro = sampler(model_variables(base, None), tokens, np.ones_like(tokens), jax.random.PRNGKey(3))
    lengths = jnp.array([8, 3, 5, 8, 2, 8, 6, 1])
    rmask = (jnp.arange(8)[None] < lengths[:, None]).astype(jnp.int32)
    return ro._replace(response_mask=rmask, lengths=lengths, eos_reached=lengths < 8, logprobs=ro.logprobs * rmask,
                       attention_mask=jnp.concatenate([ro.attention_mask[:, :-8], rmask], axis=1))


def _one_step(cfg, base, optimizer, config, batch):
    algo = make_grpo(cfg, optimizer, config)
    return jax.jit(algo.step)(algo.init(jax.random.PRNGKey(0), base), base, batch)


def _assert_same(a, b):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7), a, b)


def test_zero_variance_groups_are_counted_and_filtered_exactly(learned, rollout):
    """2 prompts x 4: group 1's scores are all equal. Counted: zero_std_frac = 0.5. Filtered: the
    update (plain SGD, so the update is the gradient) equals the update on group 0 alone: the KL
    term and the token count see only the kept rows."""
    cfg, _, base, *_ = learned
    config = _config(1, kl_coef=0.5, batch_size=2, filter_zero_std=True)
    scores = jnp.array([1.0, 0.0, 0.5, 0.0, 0.25, 0.25, 0.25, 0.25])
    filtered, m = _one_step(cfg, base, optax.sgd(0.1), config, GroupBatch(rollout, scores))
    kept, _ = _one_step(cfg, base, optax.sgd(0.1), dataclasses.replace(config, batch_size=1),
                        GroupBatch(jax.tree_util.tree_map(lambda x: x[:4], rollout), scores[:4]))
    assert float(m["zero_std_frac"]) == 0.5 and float(m["rows_kept"]) == 4.0
    assert float(jnp.abs(filtered.params.tree["layers"]["attn"]["q_proj"]["b"]).max()) > 0
    _assert_same(filtered.params, kept.params)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_accumulated_minibatches_give_the_whole_batch_update(learned, rollout, loss_type):
    """The token-level (dapo) and sequence-level (grpo) losses do not depend on the split: two
    minibatches of 4 accumulated into one SGD update (optax.MultiSteps) move the policy exactly
    as one update on all 8 rows (completion lengths differ, so a per-minibatch token mean would
    not)."""
    cfg, _, base, *_ = learned
    config = _config(1, kl_coef=0.1, batch_size=2, loss_type=loss_type)
    batch = GroupBatch(rollout, jnp.array([1.0, 0.0, 0.5, 0.0, 0.25, 0.5, 0.0, 1.0]))
    whole, _ = _one_step(cfg, base, optax.sgd(1.0), config, batch)
    split, m = _one_step(cfg, base, optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2),
                         dataclasses.replace(config, mini_batch_size=4), batch)
    assert int(m["updates"]) == 2
    _assert_same(whole.params, split.params)


def test_config_checks():
    with pytest.raises(ValueError, match="mini_batch_size"):
        GRPOConfig(batch_size=2, group_size=4, mini_batch_size=3)
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="sequence")  # RLOO's; GRPO's are per token
    with pytest.raises(TypeError, match="make_grpo needs a GRPOConfig, got RLOOConfig"):
        make_grpo(tiny_config(), None, RLOOConfig())
