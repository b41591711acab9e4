"""Running the same step functions on many devices: a ``("data", "fsdp", "tensor")`` mesh,
partition rules by parameter path, batch sharding, and a memory estimate.

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state, base = shard_params(state, mesh), shard_params(base, mesh, dtype=jnp.bfloat16)
    step = jit_step(step_fn, mesh, state)  # jax.jit with the state's out_shardings, donated
    state, metrics = step(state, shard_batch(batch, mesh), base)

With ``mesh=None`` every helper is the identity (``jit_step``: a plain ``jax.jit``), so one code
path serves one device and many.

XLA's SPMD partitioner inserts every collective. Several hosts call ``jax.distributed.initialize``
first, then run the same code: every process passes the same parameters and global batch and
keeps its own devices' shards (or feeds just its rows, ``shard_batch(..., process_local=True)``).
"""

from rlhf_jax.sharding.memory import MemoryEstimate, memory_estimate
from rlhf_jax.sharding.mesh import (AXES, BATCH_AXES, MeshConfig, batch_divisor, batch_sharding, make_mesh,
                                    process_rows, replicated, shard_batch)
from rlhf_jax.sharding.rules import (default_rules, fit_spec, param_shardings, param_specs, path_string,
                                     shard_params, spec_for)
from rlhf_jax.sharding.step import jit_step

__all__ = [
    "AXES", "BATCH_AXES", "MemoryEstimate", "MeshConfig", "batch_divisor", "batch_sharding", "default_rules",
    "fit_spec", "jit_step", "make_mesh", "memory_estimate", "param_shardings", "param_specs", "path_string",
    "process_rows", "replicated", "shard_batch", "shard_params", "spec_for",
]
