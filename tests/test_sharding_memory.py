"""The memory estimate: weights, adapters, Adam state and KV cache equal the bytes of the real
trees; the activation formula is within [0.7, 1.5] of XLA's own temporary buffer size."""

import jax
import jax.numpy as jnp

from rlhf_jax.lora import LoraConfig, init_lora, tree_size
from rlhf_jax.model import ModelConfig, Transformer, init_cache, init_head
from rlhf_jax.sharding import memory_estimate
from rlhf_jax.sharding.memory import GiB
from rlhf_jax.train import OptimConfig, lm_loss, make_optimizer


def test_memory_estimate_matches_array_bytes():
    cfg = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_position_embeddings=128)
    lcfg = LoraConfig(rank=4)
    b, s, mb = 6, 64, 4
    est = memory_estimate(cfg, lcfg, b, s, mini_batch=mb)
    base = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"]
    model = Transformer(cfg, lora=lcfg)
    lora = jax.eval_shape(lambda k: init_lora(model, k), jax.random.PRNGKey(0))  # shapes and dtypes suffice
    head = init_head(jax.random.PRNGKey(1), cfg.hidden_size)
    trainable = {"policy": lora, "critic": {"lora": lora, "head": head}}
    assert est.base == tree_size(base)[1]
    assert est.grads == tree_size(trainable)[1]
    assert est.adapters == tree_size(trainable)[1] + tree_size({"lora": lora, "head": head})[1]  # + reward
    opt_state = jax.eval_shape(make_optimizer(OptimConfig()).init, trainable)
    adam = opt_state[1][0]
    assert est.optimizer == tree_size((adam.mu, adam.nu))[1]
    cache = jax.eval_shape(lambda: init_cache(cfg, b, s))
    assert est.kv_cache == tree_size((cache.keys, cache.values))[1]
    assert est.experience == 2 * 4 * b * s * cfg.vocab_size
    assert est.total == est.held + max(est.kv_cache, est.experience, est.activations + est.logits)

    # activations: XLA's own temporary bytes for the gradient of one adapter's LM loss
    one = memory_estimate(cfg, lcfg, mb, s, trainable_adapters=1)
    tokens = jax.ShapeDtypeStruct((mb, s), jnp.int32)
    loss = lambda l, p, t: lm_loss(model.apply({"params": p, "lora": l}, t).logits, t, jnp.ones_like(t))[0]
    temp = jax.jit(jax.grad(loss)).lower(lora, base, tokens).compile().memory_analysis().temp_size_in_bytes
    assert 0.7 * temp < one.activations + one.logits < 1.5 * temp, (one.activations + one.logits, temp)
    assert "total" in est.summary()


def test_memory_estimate_of_a_half_billion_model_in_bfloat16():
    # Qwen2.5-0.5B's shape: 494M parameters, 2 bytes each in bfloat16
    cfg = ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                      intermediate_size=4864, qkv_bias=True, tie_word_embeddings=True, dtype="bfloat16")
    est = memory_estimate(cfg, LoraConfig(rank=16, alpha=32.0), 16, 256, mini_batch=4)
    assert est.base == 2 * cfg.num_params()
    assert 0.9 < est.base / GiB < 0.95
    assert est.optimizer == 2 * est.grads and est.grads < 0.1 * est.base
