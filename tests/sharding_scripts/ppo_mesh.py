"""PPO step (policy + critic adapters, in-graph reward adapter, all over one shared base) and greedy
generation on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices versus one device."""

import jax
import jax.numpy as jnp
import numpy as np

from common import ADAM_EPS, init_base, randomize_b, report, shard_info, tiny_llama, token_batch, where_max_diff
from rlhf_jax.lora import Adapter, LoraConfig, init_lora
from rlhf_jax.model import Transformer, init_head
from rlhf_jax.rollout import SamplingConfig, generate
from rlhf_jax.sharding import MeshConfig, jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.scoring import RewardModel, reward_scores
from rlhf_jax.train import OptimConfig, PPOBatch, PPOConfig, make_optimizer, make_ppo

mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
cfg = tiny_llama()
base = init_base(cfg)
lcfg = LoraConfig(rank=4, alpha=8.0)
model = Transformer(cfg, lora=lcfg)
fresh = lambda seed: init_lora(model, jax.random.PRNGKey(seed))
prompts, prompt_mask = token_batch(5, 8, 6, cfg.vocab_size, pad_rows=4)
mesh_base = shard_params(base, mesh)
out = {}

# 1. Greedy generation with a policy adapter (non-zero B): same tokens on the mesh.
policy_lora = randomize_b(fresh(11), 12)
greedy = SamplingConfig(max_new_tokens=6, greedy=True, eos_ids=())
gen = lambda v, t, m, k: generate(v, t, m, k, model=model, config=greedy)
key = jax.random.PRNGKey(0)
ro_single = jax.jit(gen)({"params": base, "lora": policy_lora}, prompts, prompt_mask, key)
variables = {"params": mesh_base, "lora": shard_params(policy_lora, mesh)}
p_tokens, p_mask = shard_batch((prompts, prompt_mask), mesh)
ro_mesh = jax.jit(gen)(variables, p_tokens, p_mask, key)
out["generate"] = {
    "tokens_single": np.asarray(ro_single.tokens), "tokens_mesh": np.asarray(ro_mesh.tokens),
    "logprob_diff": float(np.max(np.abs(np.asarray(ro_single.logprobs) - np.asarray(ro_mesh.logprobs)))),
    "tokens_sharding": shard_info(ro_mesh.tokens), "prompt_sharding": shard_info(p_tokens),
}

# 2. One PPO step (2 epochs x 2 minibatches) on the greedy rollout, with a reward adapter + score head
#    sharing the base and a critic with its own adapter and value head.
config = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, critic_init="zero", policy_lora=lcfg,
                   critic_lora=lcfg, sampling=SamplingConfig(max_new_tokens=6), kl_coef=0.1,
                   optim=OptimConfig(learning_rate=1e-3, eps=ADAM_EPS))
rm = RewardModel(Adapter(randomize_b(fresh(21), 22), lcfg), init_head(jax.random.PRNGKey(23), cfg.hidden_size))
opt = make_optimizer(config.optim)
algo = make_ppo(cfg, opt, config)
params = {"policy": Adapter(policy_lora, lcfg),
          "critic": {"model": Adapter(fresh(31), lcfg), "head": init_head(jax.random.PRNGKey(32), cfg.hidden_size, std=0.1)}}
init = jax.jit(lambda b, p: algo.init(jax.random.PRNGKey(7), b)._replace(params=p, opt_state=opt.init(p)))
rollout = jax.tree_util.tree_map(np.asarray, ro_single)
score = jax.jit(lambda r, b, t, m: reward_scores(cfg, r, b, t, m))
batch = PPOBatch(rollout, score(rm, base, rollout.tokens, rollout.attention_mask))
single, m1 = jax.jit(algo.step)(init(base, params), base, batch)
sharded = shard_params(init(base, params), mesh)
mesh_step = jit_step(algo.step, mesh, sharded)
mesh_rm = shard_params(rm, mesh)
mesh_scores = score(mesh_rm, mesh_base, shard_batch(rollout, mesh).tokens, shard_batch(rollout, mesh).attention_mask)
sharded, m8 = mesh_step(sharded, mesh_base, shard_batch(PPOBatch(rollout, mesh_scores), mesh))
keys = ("loss", "policy_loss", "value_loss", "score", "kl", "entropy", "value_mean")
out["ppo"] = {
    "metrics_single": {k: float(m1[k]) for k in keys}, "metrics_mesh": {k: float(m8[k]) for k in keys},
    "param_diff": where_max_diff(single.params, sharded.params),
    "grad_mu_diff": where_max_diff(single.opt_state, sharded.opt_state),
    "changed": where_max_diff(params, sharded.params),
    "policy_q_b": shard_info(sharded.params["policy"].tree["layers"]["attn"]["q_proj"]["b"]),
    "critic_down_a": shard_info(sharded.params["critic"]["model"].tree["layers"]["mlp"]["down_proj"]["a"]),
    "value_head": shard_info(sharded.params["critic"]["head"]["kernel"]),
    "base_gate": shard_info(mesh_base["layers"]["mlp"]["gate_proj"]["kernel"]),
    "lm_head": shard_info(mesh_base["lm_head"]),
}
report(out)
