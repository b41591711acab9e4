"""Running the same step functions on many devices: a ``("data", "fsdp", "tensor")`` mesh,
partition rules by parameter path, batch sharding, and a memory estimate.

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state, base = shard_params(state, mesh), shard_params(base, mesh, dtype=jnp.bfloat16)
    step = jax.jit(step_fn, donate_argnums=0,
                   out_shardings=(param_shardings(state, mesh), replicated(mesh)))
    state, metrics = step(state, shard_batch(batch, mesh), base)

XLA's SPMD partitioner inserts every collective; several hosts call
``jax.distributed.initialize`` first and feed their own rows (:func:`process_rows`).
"""

from rlhf_jax.sharding.memory import MemoryEstimate, memory_estimate
from rlhf_jax.sharding.mesh import (AXES, BATCH_AXES, MeshConfig, batch_divisor, batch_sharding, make_mesh,
                                    process_rows, replicated, shard_batch)
from rlhf_jax.sharding.rules import (default_rules, fit_spec, param_shardings, param_specs, path_string,
                                     shard_params, spec_for)

__all__ = [
    "AXES", "BATCH_AXES", "MemoryEstimate", "MeshConfig", "batch_divisor", "batch_sharding", "default_rules",
    "fit_spec", "make_mesh", "memory_estimate", "param_shardings", "param_specs", "path_string", "process_rows",
    "replicated", "shard_batch", "shard_params", "spec_for",
]
