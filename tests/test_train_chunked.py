"""The trainers' ``logit_chunk`` option (and PPO's ``experience_batch``): SFT and PPO steps with the LM head run over sequence
chunks (``rlhf_jax.losses.chunked``) give the same losses, metrics and updated parameters as the
whole-logit steps, and the auto rule picks what its docstring says."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig
from rlhf_jax.rollout import AUTO_CHUNK, Rollout, logit_chunk_size
from rlhf_jax.train import OptimConfig, PPOConfig, SFTBatch, SFTConfig, make_optimizer, make_ppo, make_sft
from rlhf_jax.train.ppo import PPOBatch
from tests.trainer_fixtures import tiny_base, tiny_config

LORA = LoraConfig(rank=2, alpha=4.0)


def _close(a, b, tol):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol),
                           a, b)


def test_auto_rule():
    assert logit_chunk_size(0, 1000, 1000, 10 ** 6) == 0  # 0: never
    assert logit_chunk_size(7, 1, 1, 2) == 7  # a size: always
    assert logit_chunk_size(None, 8, 1024, 151936) == AUTO_CHUNK  # 4.6 GiB of float32 logits
    assert logit_chunk_size(None, 16, 64, 20) == 0  # 80 KiB


@pytest.mark.parametrize("full", [False, True])
def test_sft_step_chunked_equals_whole(full):
    cfg = tiny_config()
    base = tiny_base(cfg)
    ids = jax.random.randint(jax.random.PRNGKey(1), (4, 11), 3, cfg.vocab_size)
    mask = jnp.ones_like(ids).at[0, :3].set(0)
    loss_mask = jnp.zeros_like(ids).at[:, 5:].set(1)
    batch = SFTBatch(ids, mask, loss_mask)
    out = []
    for chunk in (0, 3):  # 10 targets in chunks of 3: the last chunk padded
        algo = make_sft(cfg, make_optimizer(OptimConfig(learning_rate=1e-2)),
                        SFTConfig(lora=None if full else LORA, logit_chunk=chunk))
        state = algo.init(jax.random.PRNGKey(0), base)
        state, m = jax.jit(algo.step)(state, base, batch)
        out.append((state.params, m))
    (p0, m0), (p1, m1) = out
    assert float(m0["loss"]) > 1.0
    np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-6)
    assert int(m1["tokens"]) == int(m0["tokens"]) == 24
    _close(p1, p0, 2e-5)  # one Adam step (lr 1e-2) from equal gradients


def _ppo_batch(cfg, b=4, p=5, n=6, seed=3):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    tokens = jax.random.randint(k1, (b, p + n), 3, cfg.vocab_size)
    lengths = jnp.array([n, 2, 4, n])[:b]
    rmask = (jnp.arange(n)[None] < lengths[:, None]).astype(jnp.int32)
    mask = jnp.concatenate([jnp.ones((b, p), jnp.int32).at[1, :2].set(0), rmask], axis=1)
    ro = Rollout(tokens, mask, rmask, lengths, lengths < n, -jax.random.uniform(k2, (b, n)) * rmask)
    return PPOBatch(ro, jax.random.normal(k3, (b,)))


@pytest.mark.parametrize("kl_estimator,entropy_coef", [("k1", 0.01), ("full", 0.0)])
def test_ppo_step_chunked_equals_whole(kl_estimator, entropy_coef):
    cfg = tiny_config()
    base = tiny_base(cfg)
    batch = _ppo_batch(cfg)
    out = []
    for chunk, rows in ((0, None), (4, 2)):  # whole logits, whole batch vs chunks of 4 in groups of 2 rows
        config = PPOConfig(policy_lora=LORA, critic_lora=LORA, critic_init="zero", batch_size=4, mini_batch_size=2,
                           ppo_epochs=1, kl_estimator=kl_estimator, entropy_coef=entropy_coef, logit_chunk=chunk,
                           experience_batch=rows)
        algo = make_ppo(cfg, make_optimizer(OptimConfig(learning_rate=1e-2)), config)
        state = algo.init(jax.random.PRNGKey(0), base)
        state, m = jax.jit(algo.step)(state, base, batch)
        out.append((state.params, m))
    (p0, m0), (p1, m1) = out
    assert set(m0) == set(m1) and "entropy" in m0
    assert float(m0["entropy"]) > 1.0 and float(m0["approx_kl"]) != 0.0
    for k in m0:
        np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    _close(p1, p0, 2e-5)
