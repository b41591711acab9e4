"""Reward-model step (GPT-2 architecture: fused c_attn, c_proj, c_fc; LoRA adapter + score head)
on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices versus one device."""

import jax
import numpy as np

from common import ADAM_EPS, init_base, report, shard_info, tiny_gpt2, token_batch, where_max_diff
from rlhf_jax.lora import LoraConfig
from rlhf_jax.sharding import MeshConfig, jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.train import OptimConfig, RewardConfig, make_optimizer, make_reward

STEPS = 3
mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
cfg = tiny_gpt2()
base = init_base(cfg)
lcfg = LoraConfig(rank=4, alpha=8.0)
tokens, mask = token_batch(3, 16, 10, cfg.vocab_size, pad_rows=5)
batch = {"input_ids": tokens.reshape(8, 2, 10), "attention_mask": mask.reshape(8, 2, 10),
         "margin": np.zeros((8,), np.float32)}

opt = make_optimizer(OptimConfig(learning_rate=1e-3, eps=ADAM_EPS))
algo = make_reward(cfg, opt, RewardConfig(lora=lcfg))
step = algo.step
init = jax.jit(lambda b: algo.init(jax.random.PRNGKey(1), b))
single, sharded = init(base), shard_params(init(base), mesh)
mesh_base, data = shard_params(base, mesh), shard_batch(batch, mesh)
single_step = jax.jit(step)
mesh_step = jit_step(step, mesh, sharded)
losses_single, losses_mesh = [], []
for _ in range(STEPS):
    single, m1 = single_step(single, base, batch)
    sharded, m8 = mesh_step(sharded, mesh_base, data)
    losses_single.append(float(m1["loss"]))
    losses_mesh.append(float(m8["loss"]))
lora = sharded.params.model.tree["layers"]
report({
    "loss_single": losses_single, "loss_mesh": losses_mesh,
    "param_diff": where_max_diff(single.params, sharded.params),
    "grad_mu_diff": where_max_diff(single.opt_state[1][0].mu, sharded.opt_state[1][0].mu),
    "c_attn": shard_info(mesh_base["layers"]["attn"]["c_attn"]["kernel"]),
    "c_attn_bias": shard_info(mesh_base["layers"]["attn"]["c_attn"]["bias"]),
    "attn_c_proj": shard_info(mesh_base["layers"]["attn"]["c_proj"]["kernel"]),
    "c_fc": shard_info(mesh_base["layers"]["mlp"]["c_fc"]["kernel"]),
    "mlp_c_proj": shard_info(mesh_base["layers"]["mlp"]["c_proj"]["kernel"]),
    "pos_embed": shard_info(mesh_base["pos_embed"]["embedding"]),
    "lora_c_attn_a": shard_info(lora["attn"]["c_attn"]["a"]),
    "lora_c_attn_b": shard_info(lora["attn"]["c_attn"]["b"]),
    "lora_mlp_c_proj_a": shard_info(lora["mlp"]["c_proj"]["a"]),
    "head_kernel": shard_info(sharded.params.head["kernel"]),
    "batch_ids": shard_info(data["input_ids"]),
})
