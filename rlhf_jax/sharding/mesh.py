"""The device mesh and batch placement: axes ``("data", "fsdp", "tensor")``.

- ``data``: pure data parallelism (parameters replicated, batch split).
- ``fsdp``: the batch is split *and* parameters are sharded (ZeRO-3 style; XLA all-gathers a
  weight before use and reduce-scatters its gradient).
- ``tensor``: attention heads and the MLP hidden units are split (Megatron-style column/row
  parallel layers, see :mod:`rlhf_jax.sharding.rules`); the batch is not split over it.

The batch axis of every input is sharded over ``("data", "fsdp")``. Nothing here writes
communication code: the step functions are jitted with these shardings and XLA's SPMD partitioner
inserts the collectives.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rlhf_jax.config_checks import ConfigError, check

PyTree = Any

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Sizes of the three mesh axes; their product is the number of devices. At most one axis
    may be ``-1``: it takes whatever the others leave (``n_devices / product of the rest``)."""

    data: int = -1
    """Data-parallel replicas (parameters replicated); ``-1``: fill."""
    fsdp: int = 1
    """Fully-sharded data parallelism: batch split and parameters sharded over this axis."""
    tensor: int = 1
    """Tensor parallelism: heads and MLP hidden units split over this axis."""

    def __post_init__(self):
        for axis in AXES:
            size = getattr(self, axis)
            check(self, axis, isinstance(size, numbers.Integral) and not isinstance(size, bool)
                  and (size >= 1 or size == -1), "an integer >= 1, or -1 (fill)")
        if self.sizes.count(-1) > 1:
            raise ConfigError(f"MeshConfig: at most one axis may be -1 (fill), got {self}")

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def resolve(self, n_devices: int) -> tuple[int, int, int]:
        """The concrete ``(data, fsdp, tensor)`` sizes for ``n_devices`` devices."""
        sizes = list(self.sizes)
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise ValueError(f"MeshConfig {self}: {n_devices} devices are not divisible by the "
                                 f"fixed axes' product {known}")
            sizes[sizes.index(-1)] = n_devices // known
        elif known != n_devices:
            raise ValueError(f"MeshConfig {self} needs {known} devices, got {n_devices} (pass "
                             "devices=jax.devices()[:n] to use a subset, or set one axis to -1)")
        return tuple(sizes)

    @classmethod
    def from_string(cls, text: str) -> "MeshConfig":
        """Parse ``"data=2,fsdp=2,tensor=2"`` (the CLI's ``--mesh``); missing axes keep their
        defaults, ``-1`` fills."""
        kw = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in AXES:
                raise ValueError(f"--mesh expects comma-separated axis=size with axes {AXES}, got {text!r}")
            kw[name] = int(value)
        return cls(**kw)


def make_mesh(config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A :class:`jax.sharding.Mesh` with axes ``("data", "fsdp", "tensor")`` over ``devices``
    (default: every device of every process, ``jax.devices()``), laid out by ``jax.make_mesh``
    (topology-aware on TPU). Axis types are ``Auto``: shardings of intermediate values are left
    to XLA's propagation, so the library's step functions run unchanged."""
    config = MeshConfig() if config is None else config
    devices = jax.devices() if devices is None else list(devices)
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``("data", "fsdp")``; every other axis whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    """The global batch size must be a multiple of this (``data * fsdp``)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def shard_batch(batch: PyTree, mesh: Mesh | None, *, process_local: bool = False) -> PyTree:
    """Place every array leaf of ``batch`` with its leading axis over ``("data", "fsdp")``
    (0-d leaves are replicated; ``None`` leaves stay ``None``). ``mesh=None``: ``batch`` is
    returned unchanged (one device), so a trainer can call this unconditionally.

    ``process_local=False``: the leaves are the global batch, and with several processes every
    process passes the same global batch (e.g. the same seed-determined rows) and keeps only the
    rows of its own devices. ``process_local=True`` (several processes): each process passes just
    its own rows, :func:`process_rows`, and the global batch is assembled from them
    (``jax.make_array_from_process_local_data``) -- for input pipelines that read per host.
    """
    if mesh is None:
        return batch
    sharding, rep = batch_sharding(mesh), replicated(mesh)
    div = batch_divisor(mesh)
    multi = jax.process_count() > 1

    def place(x):
        target = rep if np.ndim(x) == 0 else sharding
        if process_local and multi:
            return jax.make_array_from_process_local_data(target, np.asarray(x))
        if np.ndim(x) and np.shape(x)[0] % div:
            raise ValueError(f"shard_batch: batch size {np.shape(x)[0]} is not a multiple of "
                             f"data * fsdp = {div}; pad the batch or change the mesh")
        if multi:
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, target, lambda idx: host[idx])
        return jax.device_put(x, target)

    return jax.tree_util.tree_map(place, batch)


def process_rows(mesh: Mesh, global_batch_size: int) -> slice:
    """The rows of a global batch of ``global_batch_size`` that this process feeds to
    :func:`shard_batch` (a contiguous block; all of them in a one-process run)."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [global_batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    lo, hi = min(starts), max(stops)
    covered = sum(len(range(*slice(s, e).indices(global_batch_size))) for s, e in set(zip(starts, stops)))
    if covered != hi - lo:
        raise ValueError("process_rows: this process's rows are not one contiguous block for this mesh")
    return slice(lo, hi)
