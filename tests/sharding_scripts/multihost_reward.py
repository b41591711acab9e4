"""Reward-model training across processes: ``multihost_reward.py OUT multi PROCESS_ID PORT`` is one of
two processes (2 CPU devices each, gloo collectives over 127.0.0.1) that build a global
(data=1, fsdp=2, tensor=2) mesh -- fsdp across the processes, tensor inside each -- and train on
global batches (alternately, every process passes the whole batch or only its own rows);
``multihost_reward.py OUT single`` is the one-process, one-device reference. Both write the
per-step losses and the final parameters."""

import json
import sys

import jax

out_path, mode = sys.argv[1], sys.argv[2]
if mode == "multi":
    process_id, port = int(sys.argv[3]), int(sys.argv[4])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in jax 0.10; explicit
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=60,
                               heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from common import ADAM_EPS, init_base, shard_info, tiny_llama, token_batch  # noqa: E402
from rlhf_jax.lora import LoraConfig  # noqa: E402
from rlhf_jax.sharding import (MeshConfig, jit_step, make_mesh, path_string, process_rows, shard_batch,  # noqa: E402
                               shard_params)
from rlhf_jax.train import OptimConfig, RewardConfig, make_optimizer, make_reward  # noqa: E402

STEPS, BATCH, T = 3, 8, 10
cfg = tiny_llama()
base = init_base(cfg)  # the same values in every process (same seed): each keeps its own shards
lcfg = LoraConfig(rank=4, alpha=8.0)
opt = make_optimizer(OptimConfig(learning_rate=1e-3, eps=ADAM_EPS))
algo = make_reward(cfg, opt, RewardConfig(lora=lcfg))
step = algo.step
state = jax.jit(lambda b: algo.init(jax.random.PRNGKey(1), b))(base)


def global_batch(i):
    tokens, mask = token_batch(100 + i, 2 * BATCH, T, cfg.vocab_size, pad_rows=4)
    return {"input_ids": tokens.reshape(BATCH, 2, T), "attention_mask": mask.reshape(BATCH, 2, T),
            "margin": np.zeros((BATCH,), np.float32)}


result = {"process_count": jax.process_count()}
losses = []
if mode == "single":
    step = jax.jit(step)
    for i in range(STEPS):
        state, m = step(state, base, global_batch(i))
        losses.append(float(m["loss"]))
    final = jax.tree_util.tree_map(np.asarray, state.params)
else:
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))
    rows = process_rows(mesh, BATCH)
    state, base = shard_params(state, mesh), shard_params(base, mesh)
    step = jit_step(step, mesh, state)
    for i in range(STEPS):
        if i % 2:  # every process passes only its own rows
            data = shard_batch({k: v[rows] for k, v in global_batch(i).items()}, mesh, process_local=True)
        else:  # every process passes the same global batch and keeps its rows
            data = shard_batch(global_batch(i), mesh)
        state, m = step(state, base, data)
        losses.append(float(multihost_utils.process_allgather(m["loss"], tiled=True)))
    final = multihost_utils.process_allgather(state.params, tiled=True)
    q = base["layers"]["attn"]["q_proj"]["kernel"]
    result.update({
        "process_id": jax.process_index(), "rows": [rows.start, rows.stop],
        "mesh_device_processes": [[d.process_index for d in r] for r in mesh.devices.reshape(-1, 2)],
        "local_devices": jax.local_device_count(), "global_devices": jax.device_count(),
        "q_proj": dict(shard_info(q), fully_addressable=q.is_fully_addressable),
    })
result["losses"] = losses
if mode == "single" or jax.process_index() == 0:
    np.savez(out_path + ".npz", **{path_string(path): np.asarray(x)
                                   for path, x in jax.tree_util.tree_flatten_with_path(final)[0]})
with open(out_path + (f".{jax.process_index()}" if mode == "multi" else "") + ".json", "w") as f:
    json.dump(result, f)
if mode == "multi":
    jax.distributed.shutdown()
