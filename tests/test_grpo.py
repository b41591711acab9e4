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
                  policy_lora=LoraConfig(rank=4, alpha=8.0), optim=OptimConfig(learning_rate=3e-3),
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


def test_zero_variance_groups_are_counted_and_filtered_exactly(learned):
    """2 prompts x 4: group 1's scores are all equal. Counted: zero_std_frac = 0.5. Filtered: the
    update (plain SGD, so the update is the gradient) equals the update on group 0 alone: the KL
    term and the token count see only the kept rows."""
    cfg, tok, base, *_ = learned
    config = _config(1, kl_coef=0.5, batch_size=2, filter_zero_std=True)
    ids = tok(["w1 w2", "w3 w4"])["input_ids"]
    tokens = np.repeat(np.array(ids), 4, axis=0)
    sampler = cached_sampler(cfg, None, dataclasses.replace(config.sampling, pad_id=0))
    ro = sampler(model_variables(base, None), tokens, np.ones_like(tokens), jax.random.PRNGKey(3))
    scores = jnp.array([1.0, 0.0, 0.5, 0.0, 0.25, 0.25, 0.25, 0.25])

    def one_step(c, batch):
        algo = make_grpo(cfg, optax.sgd(0.1), c)
        return jax.jit(algo.step)(algo.init(jax.random.PRNGKey(0), base), base, batch)

    filtered, m = one_step(config, GroupBatch(ro, scores))
    kept, _ = one_step(dataclasses.replace(config, batch_size=1),
                       GroupBatch(jax.tree_util.tree_map(lambda x: x[:4], ro), scores[:4]))
    assert float(m["zero_std_frac"]) == 0.5 and float(m["rows_kept"]) == 4.0
    moved = filtered.params.tree["layers_0"]["attn"]["q_proj"]["b"]
    assert float(jnp.abs(moved).max()) > 0
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                           filtered.params, kept.params)


def test_config_checks():
    with pytest.raises(ValueError, match="mini_batch_size"):
        GRPOConfig(batch_size=2, group_size=4, mini_batch_size=3)
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="sequence")  # RLOO's; GRPO's are per token
    with pytest.raises(TypeError, match="make_grpo needs a GRPOConfig, got RLOOConfig"):
        make_grpo(tiny_config(), None, RLOOConfig())
