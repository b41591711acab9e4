"""PPO trainer: KL = 0 at step 0, base untouched, one base copy in memory, reward rises on a toy
task, bit-identical resume, reward-threshold stop, in-graph reward model with a critic from it."""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import Adapter, LoraConfig, tree_size
from rlhf_jax.model import ModelConfig, init_head
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.scoring import ModelScorer, RewardModel, critic_from_reward
from rlhf_jax.train import OptimConfig, PPOConfig, RunConfig, make_ppo, make_optimizer, train_ppo
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer


def TARGET(prompts, completions):
    """The count-the-token task: 1/8 per w7 in the completion."""
    return [c.split().count("w7") / 8 for c in completions]


def _config(steps, out=None, **kw):
    base = dict(batch_size=16, mini_batch_size=8, critic_init="zero", sampling=SamplingConfig(max_new_tokens=8),
                kl_coef=0.01, policy_lora=LoraConfig(rank=4, alpha=8.0), critic_lora=LoraConfig(rank=4, alpha=8.0),
                optim=OptimConfig(learning_rate=3e-3),
                run=RunConfig(max_steps=steps, out_dir=None if out is None else str(out), progress=False,
                              checkpoint_every=kw.pop("checkpoint_every", 0)))
    base.update(kw)
    return PPOConfig(**base)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg)
    before = jax.tree_util.tree_map(np.array, base)
    out = tmp_path_factory.mktemp("ppo")
    res = train_ppo(cfg, base, tok, tiny_prompts(), TARGET, _config(24, out / "straight"))
    return cfg, tok, base, before, res, out


def test_reward_rises_and_kl_stays_finite(learned):
    *_, res, _ = learned
    scores = [r["score"] for r in res.history]
    # step 0 samples from the base (policy = reference), which emits w7 in roughly 1 token of
    # 10-50; PPO must clearly raise the share (each extra w7 per completion adds 0.125)
    assert scores[0] < 0.25
    assert np.mean(scores[-4:]) > scores[0] + 0.15
    assert all(np.isfinite(r["kl"]) for r in res.history)
    assert res.stop_reason == "max_steps"


def test_policy_equals_reference_at_step0_and_base_untouched(learned):
    _, _, base, before, res, _ = learned
    assert res.history[0]["kl"] == 0.0  # B = 0: log pi - log pi_ref is exactly 0 on every token
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, base))


def test_resume_is_bit_identical(learned):
    cfg, tok, base, _, res, out = learned
    train_ppo(cfg, base, tok, tiny_prompts(), TARGET, _config(12, out / "resumed", checkpoint_every=12))
    resumed = train_ppo(cfg, base, tok, tiny_prompts(), TARGET, _config(24, out / "resumed", checkpoint_every=12))
    assert [r["step"] for r in resumed.history] == list(range(24))
    for a, b in zip(res.history, resumed.history):
        assert a == b
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.array, res.state.params),
                           jax.tree_util.tree_map(np.array, resumed.state.params))
    assert (out / "straight" / "ppo_curves.png").exists()


def test_reward_threshold_stops_early():
    cfg, tok = tiny_config(), tiny_tokenizer()
    res = train_ppo(cfg, tiny_base(cfg), tok, tiny_prompts(), lambda p, c: [1.0] * len(c),
                    _config(50, reward_threshold=0.5, threshold_window=2, ppo_epochs=1))
    assert len(res.history) == 2 and res.stop_reason.startswith("reward_threshold")


def test_one_base_copy_with_ingraph_reward_and_critic_from_reward():
    cfg = ModelConfig(vocab_size=20, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                      max_position_embeddings=32, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    tok = tiny_tokenizer()
    base = tiny_base(cfg)
    before = jax.tree_util.tree_map(np.array, base)
    from rlhf_jax.lora import init_lora
    from rlhf_jax.model import Transformer

    rl = LoraConfig(rank=2, alpha=4.0)
    rm_lora = jax.tree_util.tree_map(lambda x: x + 0.01, init_lora(Transformer(cfg, lora=rl), jax.random.PRNGKey(5)))
    rm = RewardModel(Adapter(rm_lora, rl), init_head(jax.random.PRNGKey(6), 128), gain=2.0, bias=0.5)
    config = _config(2, critic_init="reward", kl_estimator="full", adaptive_kl=True, kl_target=0.01, kl_horizon=100.0,
                     policy_lora=LoraConfig(rank=2, alpha=4.0))
    # the critic starts as the reward model: same adapter, head folded with the normalisation
    critic = critic_from_reward(rm)
    np.testing.assert_array_equal(np.asarray(critic["model"].tree["layers"]["attn"]["q_proj"]["b"]),
                                  np.asarray(rm_lora["layers"]["attn"]["q_proj"]["b"]))
    assert critic["model"].config == rl
    np.testing.assert_allclose(np.asarray(critic["head"]["bias"]), 2.0 * 0.0 + 0.5)
    np.testing.assert_allclose(np.asarray(critic["head"]["kernel"]), 2.0 * np.asarray(rm.head["kernel"]))
    gc.collect()
    live_before = {id(x) for x in jax.live_arrays()}
    res = train_ppo(cfg, base, tok, tiny_prompts(32), ModelScorer(cfg, rm), config)
    assert res.history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # exact full-vocabulary KL at step 0
    assert res.history[1]["beta"] != res.history[0]["beta"]  # the adaptive controller moved beta
    assert res.state.params["critic"]["model"].config == rl  # the critic kept the reward adapter's shape
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, base))

    gc.collect()
    new = [x for x in jax.live_arrays() if id(x) not in live_before]
    new_bytes = sum(x.nbytes for x in new)
    _, base_bytes = tree_size(base)
    _, state_bytes = tree_size(res.state)
    _, opt_bytes = tree_size(res.state.opt_state)
    # Everything PPO created and still holds: adapters, heads, their optimizer state, scalars.
    # No second base: the new arrays are far below one base's bytes, and the run holds
    # base + reward model + state only (and a few KB of prompts and scalars).
    assert new_bytes < 0.5 * base_bytes
    assert new_bytes <= state_bytes + 64 * 1024
    assert opt_bytes > 0 and state_bytes < 0.5 * base_bytes
