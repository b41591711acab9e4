"""The trainers themselves (train_sft, train_reward_model, train_ppo) with
``RunConfig(mesh=MeshConfig(data=2, fsdp=2, tensor=2))`` against one device. Writes JSON to argv[1]."""

import json
import sys

import jax
import numpy as np

from rlhf_jax.lora import LoraConfig
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.sharding import MeshConfig
from rlhf_jax.train import (OptimConfig, PPOConfig, RewardConfig, RunConfig, SFTConfig, train_ppo, train_reward_model,
                            train_sft)
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


cfg, tok = tiny_config(), tiny_tokenizer()
base = tiny_base(cfg)
MESH = MeshConfig(data=2, fsdp=2, tensor=2)
run = lambda mesh, steps=3: RunConfig(max_steps=steps, progress=False, mesh=mesh)
optim = OptimConfig(learning_rate=1e-3, eps=1e-6)
P = [f"w{i % 5} w{(i + 1) % 5}" for i in range(40)]
C = [f"w{10 + i % 5} w{10 + (i + 2) % 5} w15" for i in range(40)]
SFT_ROWS = [{"prompt": p, "completion": c} for p, c in zip(P, C)]
out = {}
for name, lora in (("sft_lora", LoraConfig(rank=4, alpha=8.0)), ("sft_full", None)):
    r = [train_sft(cfg, base, tok, SFT_ROWS, SFTConfig(lora=lora, batch_size=8, max_length=10, eval_fraction=0.2,
                                                 optim=optim, run=run(m))) for m in (None, MESH)]
    out[name] = {"loss": [[h["loss"] for h in x.history] for x in r], "param_diff": max_diff(r[0].params, r[1].params),
                 "q_spec": [str(s) for s in r[1].params["layers"]["attn"]["q_proj"]["kernel"].sharding.spec]}
pairs = [{"prompt": P[i], "chosen": C[i], "rejected": C[(i + 1) % 40]} for i in range(40)]
r = [train_reward_model(cfg, base, tok, pairs, RewardConfig(lora=LoraConfig(rank=4, alpha=8.0), batch_size=8,
                                                            max_length=24, optim=optim, run=run(m)))
     for m in (None, MESH)]
out["reward"] = {"loss": [[h["loss"] for h in x.history] for x in r],
                 "param_diff": max_diff(r[0].reward_model, r[1].reward_model)}
target = lambda p, c: [x.split().count("w7") / 8 for x in c]
pc = lambda m: PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, critic_init="zero",
                         sampling=SamplingConfig(max_new_tokens=6), policy_lora=LoraConfig(rank=4, alpha=8.0),
                         critic_lora=LoraConfig(rank=4, alpha=8.0), optim=optim, run=run(m, 2))
res = [train_ppo(cfg, base, tok, tiny_prompts(), target, pc(m)) for m in (None, MESH)]
out["ppo"] = {k: [[h[k] for h in x.history] for x in res] for k in ("score", "kl", "loss", "value_loss")}
out["ppo"]["param_diff"] = max_diff(res[0].state.params, res[1].state.params)
out["ppo"]["b_spec"] = [str(s) for s in res[1].state.params["policy"].tree["layers"]["attn"]["q_proj"]["b"].sharding.spec]
out["devices"] = jax.device_count()
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
