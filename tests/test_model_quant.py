"""QLoRA: int8 (per output column) and NF4 (block-wise) frozen bases. Codes against a NumPy
reference, bytes against bfloat16, logits against the float base within stated tolerances, a LoRA
run on the quantised base lowers the loss and leaves the base untouched, the sampler runs on it,
export refuses it until dequantised."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.export import ExportError, save_hf_folder
from rlhf_jax.lora import LoraConfig, init_lora, merge_lora, tree_size
from rlhf_jax.model import (NF4_LEVELS, Int8Kernel, ModelConfig, NF4Kernel, Transformer, dequantize_base,
                            quantize_base, quantized_leaves)
from rlhf_jax.model.quant import quantize_int8, quantize_nf4
from rlhf_jax.rollout import Sampler, SamplingConfig
from tests.test_export_utils import random_params

# D = 64, F = 128: every kernel's Din * Dout is a multiple of NF4's block of 64
CFG = ModelConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                  max_position_embeddings=64, pad_token_id=0, eos_token_id=2)


def test_nf4_levels_are_the_published_ones():
    # QLoRA (Dettmers et al. 2023), appendix E: the NF4 data type
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
    np.testing.assert_allclose(NF4_LEVELS, published, atol=1e-6)


def test_codes_equal_a_numpy_reference_and_round_trip_errors_are_bounded():
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 32, 96)) * 0.05, np.float32)
    # int8: scale = max |column| / 127, code = round(w / scale); error <= scale / 2
    q8 = quantize_int8(jnp.asarray(w))
    scale = np.abs(w).max(axis=1) / 127
    np.testing.assert_allclose(np.asarray(q8.scale), scale, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q8.q), np.round(w / scale[:, None, :]).astype(np.int8))
    assert np.all(np.abs(np.asarray(q8.dequantize()) - w) <= scale[:, None, :] / 2 + 1e-7)
    # nf4: blocks of 64 of the row-major matrix, nearest level of w / absmax (NumPy argmin), absmax as
    # stored (float16)
    q4 = quantize_nf4(jnp.asarray(w))
    blocks = w.reshape(2, -1, 64)
    absmax = np.abs(blocks).max(-1).astype(np.float16).astype(np.float32)
    codes = np.abs((blocks / absmax[..., None])[..., None] - NF4_LEVELS).argmin(-1).reshape(2, -1)
    np.testing.assert_array_equal(np.asarray(q4.absmax, np.float32), absmax)
    packed = np.asarray(q4.packed)
    np.testing.assert_array_equal(np.stack([packed >> 4, packed & 15], -1).reshape(2, -1), codes)
    assert q4.shape == (2, 32, 96) and q8.shape == (2, 32, 96)
    err = np.asarray(q4.dequantize()) - w
    assert np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(w ** 2)) < 0.1  # measured 0.092 on Gaussian weights
    with pytest.raises(ValueError, match="not a multiple of the block size 64"):
        quantize_nf4(jnp.ones((3, 7)))


def _kernels(tree):
    return {k: v for k, v in tree["layers"]["attn"].items()} | {k: v for k, v in tree["layers"]["mlp"].items()}


def test_quantized_base_bytes():
    base = random_params(CFG.replace(dtype="bfloat16"))
    bf16 = tree_size([k["kernel"] for k in _kernels(base).values()])[1]
    sizes = {kind: tree_size([k["kernel"] for k in _kernels(quantize_base(base, kind)).values()])[1]
             for kind in ("int8", "nf4")}
    # per [Din, Dout] kernel: bf16 2 Din Dout bytes; int8 Din Dout + 4 Dout; nf4 Din Dout / 2 + 2 Din Dout / 64
    n = sum(int(np.prod(k["kernel"].shape)) for k in _kernels(base).values())
    cols = sum(k["kernel"].shape[0] * k["kernel"].shape[2] for k in _kernels(base).values())
    assert bf16 == 2 * n and sizes["int8"] == n + 4 * cols and sizes["nf4"] == n // 2 + 2 * n // 64
    assert bf16 / sizes["int8"] > 1.85  # 2 / (1 + 4 / Din): 1.88 at Din = 64, 1.99 at Din = 896
    assert bf16 / sizes["nf4"] > 3.7  # 16 bits / 4.25 bits = 3.76
    q = quantize_base(base, "nf4")
    assert len(quantized_leaves(q)) == 7 and isinstance(q["layers"]["attn"]["q_proj"]["kernel"], NF4Kernel)
    assert q["lm_head"].dtype == jnp.bfloat16 and q["embed"]["embedding"].dtype == jnp.bfloat16  # kept


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_logits_of_the_quantized_base_within_the_stated_tolerance(compute):
    """Stated tolerance, on a random base with N(0, 0.2^2) weights (logit std ~1.7): int8 logits
    within 0.1 x the logits' RMS and KL(float || int8) <= 0.01 per position (measured 0.06 and
    7e-4); NF4 mean KL <= 0.1 per position and max <= 0.3 (measured 0.05 and 0.13: 4 bits on
    N(0, 0.2^2) weights, whose noise two random blocks amplify). The quantised model equals its own
    dequantised weights to rounding."""
    cfg = CFG.replace(dtype=compute)
    base = random_params(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 16), 3, 97)
    apply = jax.jit(lambda p: Transformer(cfg).apply({"params": p}, tokens).logits)
    ref = apply(base)
    rms = float(jnp.sqrt(jnp.mean((ref - ref.mean(-1, keepdims=True)) ** 2)))
    kl = lambda lq: jnp.sum(jax.nn.softmax(ref) * (jax.nn.log_softmax(ref) - jax.nn.log_softmax(lq)), -1)
    l8 = apply(quantize_base(base, "int8"))
    assert float(jnp.max(jnp.abs(l8 - ref))) < 0.1 * rms and float(jnp.max(kl(l8))) < 0.01
    q4 = quantize_base(base, "nf4")
    l4 = apply(q4)
    assert float(jnp.mean(kl(l4))) < 0.1 and float(jnp.max(kl(l4))) < 0.3
    same = apply(dequantize_base(q4, jnp.dtype(compute)))
    assert float(jnp.max(jnp.abs(same - l4))) < (1e-4 if compute == "float32" else 0.05 * rms)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_lora_on_a_quantized_base_trains_and_samples(kind):
    cfg = CFG.replace(dtype="bfloat16", remat="block")
    base = quantize_base(random_params(cfg), kind)
    frozen = jax.tree_util.tree_map(np.asarray, base)
    lcfg = LoraConfig(rank=4, alpha=8.0)
    model = Transformer(cfg, lora=lcfg)
    lora = init_lora(model, jax.random.PRNGKey(2))
    tokens = jax.random.randint(jax.random.PRNGKey(3), (4, 16), 3, 97)
    opt = optax.adam(3e-2)

    @jax.jit
    def step(lora, opt_state):
        def loss_fn(lora):
            logits = model.apply({"params": base, "lora": lora}, tokens).logits
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))

        loss, grads = jax.value_and_grad(loss_fn)(lora)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(lora, updates), opt_state, loss

    opt_state = opt.init(lora)
    losses = []
    for _ in range(6):
        lora, opt_state, loss = step(lora, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    jax.tree_util.tree_map(np.testing.assert_array_equal, frozen, jax.tree_util.tree_map(np.asarray, base))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(lora))

    sampler = Sampler(model, SamplingConfig(max_new_tokens=6, temperature=1.0))
    prompts = jnp.asarray(np.random.default_rng(0).integers(3, 97, size=(2, 5)), jnp.int32)
    out = sampler({"params": base, "lora": lora}, prompts, jnp.ones((2, 5), jnp.int32), jax.random.PRNGKey(4))
    assert out.tokens.shape == (2, 11) and bool(jnp.all(jnp.isfinite(out.logprobs)))
    # the sampled log-probs are the quantised model's own (a full forward pass over the rollout)
    logits = model.apply({"params": base, "lora": lora}, out.tokens, attention_mask=out.attention_mask).logits
    full = jnp.take_along_axis(jax.nn.log_softmax(logits[:, 4:-1]), out.tokens[:, 5:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(full) * out.response_mask, atol=0.05)


def test_export_and_merge_refuse_a_quantized_base(tmp_path):
    base = random_params(CFG)
    q = quantize_base(base, "int8")
    with pytest.raises(ExportError, match=r"quantised kernels .*dequantize_base"):
        save_hf_folder(tmp_path / "x", CFG, q)
    lora = init_lora(Transformer(CFG, lora=LoraConfig(rank=2)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="is quantised; merge into a float base"):
        merge_lora(q, lora, scale=1.0)
    save_hf_folder(tmp_path / "x", CFG, dequantize_base(q, jnp.float32))  # explicit: the quantised weights
    assert isinstance(q["layers"]["mlp"]["up_proj"]["kernel"], Int8Kernel)
