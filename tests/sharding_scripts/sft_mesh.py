"""SFT step on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices versus one device: full
fine-tuning (every base weight sharded), gradient accumulation, and a bfloat16 base under a
float32 adapter. Writes a JSON report (see tests/test_sharding_mesh.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from common import ADAM_EPS, init_base, max_diff, report, shard_info, tiny_llama, token_batch, where_max_diff
from rlhf_jax.lora import LoraConfig
from rlhf_jax.model import Transformer
from rlhf_jax.sharding import MeshConfig, jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.train import OptimConfig, SFTBatch, SFTConfig, make_optimizer, make_sft

LR = 1e-3
out = {"devices": jax.device_count()}
mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
out["mesh"] = dict(mesh.shape)
cfg = tiny_llama()
base = init_base(cfg)
tokens, mask = token_batch(0, 8, 12, cfg.vocab_size, pad_rows=3)
loss_mask = np.zeros_like(mask)
loss_mask[:, -5:] = 1  # five loss tokens in every row: the token mean of a batch = the mean of its halves' means
batch = SFTBatch(tokens, mask, loss_mask)
half = lambda rows: SFTBatch(*(None if x is None else x[rows] for x in batch))


def fresh_state(algo, base):
    return jax.jit(lambda b: algo.init(jax.random.PRNGKey(0), b))(base)


# 1. Full fine-tuning: the trainable tree is the whole base, sharded by the rules.
opt = make_optimizer(OptimConfig(learning_rate=LR, eps=ADAM_EPS))
algo = make_sft(cfg, opt, SFTConfig(lora=None))
step = algo.step
single_step = jax.jit(step)
single = fresh_state(algo, base)
sharded = shard_params(fresh_state(algo, base), mesh)
mesh_step = jit_step(step, mesh, sharded)
data = shard_batch(batch, mesh)
out["batch_tokens"] = shard_info(data.input_ids)
losses_single, losses_mesh, first = [], [], None
for _ in range(2):
    single, m1 = single_step(single, None, batch)
    sharded, m8 = mesh_step(sharded, None, data)
    first = single if first is None else first
    losses_single.append(float(m1["loss"]))
    losses_mesh.append(float(m8["loss"]))
out["full"] = {
    "loss_single": losses_single, "loss_mesh": losses_mesh,
    "param_diff": where_max_diff(single.params, sharded.params),
    "opt_diff": where_max_diff(single.opt_state, sharded.opt_state),
    "q_proj": shard_info(sharded.params["layers"]["attn"]["q_proj"]["kernel"]),
    "o_proj": shard_info(sharded.params["layers"]["attn"]["o_proj"]["kernel"]),
    "down_proj": shard_info(sharded.params["layers"]["mlp"]["down_proj"]["kernel"]),
    "embed": shard_info(sharded.params["embed"]["embedding"]),
    "norm": shard_info(sharded.params["final_norm"]["scale"]),
    "adam_mu_q_proj": shard_info(sharded.opt_state[1][0].mu["layers"]["attn"]["q_proj"]["kernel"]),
    "changed": max_diff(base, sharded.params),
}

# 2. Gradient accumulation, on the mesh: 2 micro-steps of 4 rows (optax.MultiSteps) == the one
#    step of 8 rows on one device above (its first update).
acc_opt = make_optimizer(OptimConfig(learning_rate=LR, eps=ADAM_EPS, grad_accum_steps=2))
acc_algo = make_sft(cfg, acc_opt, SFTConfig(lora=None))
acc_step = acc_algo.step
acc = shard_params(fresh_state(acc_algo, base), mesh)
acc_jit = jit_step(acc_step, mesh, acc)
acc, m_a = acc_jit(acc, None, shard_batch(half(slice(0, 4)), mesh))
after_first = max_diff(base, acc.params)
acc, m_b = acc_jit(acc, None, shard_batch(half(slice(4, 8)), mesh))
out["accum"] = {
    "loss_big": losses_single[0], "loss_micro_mean": (float(m_a["loss"]) + float(m_b["loss"])) / 2,
    "param_diff": where_max_diff(first.params, acc.params), "changed": max_diff(base, acc.params),
    "unchanged_after_first_micro_step": after_first,
    "acc_grads_q_proj": shard_info(acc.opt_state.acc_grads["layers"]["attn"]["q_proj"]["kernel"]),
}

# 3. bfloat16 base (sharded, frozen) under a float32 LoRA adapter with float32 Adam state; the
#    logits (and so the loss) stay float32.
lcfg = LoraConfig(rank=4, alpha=8.0)
cfg16 = cfg.replace(dtype="bfloat16")
model16 = Transformer(cfg16, lora=lcfg)
base16 = shard_params(base, mesh, dtype=jnp.bfloat16)
opt16 = make_optimizer(OptimConfig(learning_rate=LR))
algo16 = make_sft(cfg16, opt16, SFTConfig(lora=lcfg))
step16 = algo16.step
s16 = shard_params(fresh_state(algo16, base16), mesh)
adapter = jax.device_get(s16.params.tree)  # a host copy: the step donates s16
s16_jit = jit_step(step16, mesh, s16)
losses16 = []
for _ in range(2):
    s16, m16 = s16_jit(s16, base16, data)
    losses16.append(float(m16["loss"]))
logits = jax.eval_shape(lambda v, t, am: model16.apply(v, t, attention_mask=am).logits,
                        {"params": base16, "lora": s16.params.tree}, data.input_ids, data.attention_mask)
out["bf16"] = {
    "losses": losses16, "loss_f32": losses_single[0], "logits_dtype": str(logits.dtype),
    "base_q_proj": shard_info(base16["layers"]["attn"]["q_proj"]["kernel"]),
    "lora_a": shard_info(s16.params.tree["layers"]["attn"]["q_proj"]["a"]),
    "lora_b": shard_info(s16.params.tree["layers"]["attn"]["q_proj"]["b"]),
    "base_dtypes": sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(base16)}),
    "adapter_dtypes": sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(s16.params)}),
    "adam_dtypes": sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(s16.opt_state[1][0].mu)}),
    "changed": max_diff(adapter, s16.params.tree),
}
report(out)
