"""Partition rules by parameter path: a ``PartitionSpec`` for every leaf of any pytree that holds
model parameters (a base tree, a LoRA tree, a ``TrainState`` / ``PPOState`` with its optimizer
state).

A leaf's path is its keys joined by ``/`` (``params/layers/attn/q_proj/kernel``); the first rule
whose regular expression is *found* in the path gives its spec, so the same rules apply wherever a
parameter tree is nested. Rules describe one layer (``[Din, Dout]``); the blocks' leaves are
stacked ``[L, Din, Dout]`` under ``layers`` and get an unsharded layer axis in front. Megatron-style
tensor parallelism (Shoeybi et al. 2019) plus FSDP:

- column-parallel layers, kernel ``[Din, Dout]`` -> ``P("fsdp", "tensor")``: ``q/k/v_proj``,
  ``gate/up_proj`` (Llama), ``c_attn``, ``c_fc`` (GPT-2); their bias ``[Dout]`` -> ``P("tensor")``;
- row-parallel layers -> ``P("tensor", "fsdp")``: ``o_proj``, ``down_proj``, ``c_proj``; bias replicated;
- ``embed/embedding [V, D]`` -> ``P("tensor", "fsdp")``, ``lm_head [D, V]`` -> ``P("fsdp", "tensor")``
  (vocabulary over ``tensor``), GPT-2 ``pos_embed/embedding`` -> ``P(None, "fsdp")``;
- norms, value / score heads (``.../head/...``) and anything unmatched: replicated.

LoRA leaves follow their base kernel (found by replacing ``a``/``b`` with ``kernel`` in the path):
``a [Din, R]`` -> ``P(kernel_spec[0], None)``, ``b [R, Dout]`` -> ``P(None, kernel_spec[1])``, so
``x A B`` has the layout of ``x W``. Optimizer state (optax ``mu``/``nu``, ``MultiSteps``'
``acc_grads``) mirrors the parameter tree, so its paths end like the parameters' and it gets the
same specs with no extra rule; its counters are replicated. Quantised kernels
(:func:`rlhf_jax.model.quantize_base`) follow their kernel too: int8 codes as the kernel, their
per-column scales as its columns, NF4's flat codes and block maxima as its rows.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhf_jax.lora import LAYERS
from rlhf_jax.model.quant import is_quantized

PyTree = Any
Rules = Sequence[tuple[str, P]]

_COLUMN_LLAMA = "q_proj|k_proj|v_proj|gate_proj|up_proj"
_ROW_LLAMA = "o_proj|down_proj"
_COLUMN_GPT2 = "c_attn|c_fc"
_ROW_GPT2 = "c_proj"

_COMMON = (
    (r"(^|/)head/(kernel|bias)$", P()),               # value / score heads [D], []
    (r"(^|/)embed/embedding$", P("tensor", "fsdp")),  # [V, D]
    (r"(^|/)lm_head$", P("fsdp", "tensor")),          # [D, V]
)


def _linear(column: str, row: str) -> tuple[tuple[str, P], ...]:
    return (
        (rf"(^|/)({column})/kernel$", P("fsdp", "tensor")),
        (rf"(^|/)({column})/bias$", P("tensor")),
        (rf"(^|/)({row})/kernel$", P("tensor", "fsdp")),
        (rf"(^|/)({row})/bias$", P()),
    )


_ARCH_RULES = {
    "llama": _COMMON + _linear(_COLUMN_LLAMA, _ROW_LLAMA) + (
        (r"(^|/)(attn_norm|mlp_norm|final_norm)/scale$", P()),
    ),
    "gpt2": _COMMON + (
        (r"(^|/)pos_embed/embedding$", P(None, "fsdp")),  # [max positions, D]
    ) + _linear(_COLUMN_GPT2, _ROW_GPT2) + (
        (r"(^|/)(attn_norm|mlp_norm|final_norm)/(scale|bias)$", P()),
    ),
}


def default_rules(arch: str | None = None) -> tuple[tuple[str, P], ...]:
    """The rules for ``arch`` (``"llama"`` or ``"gpt2"``); ``None``: both (their layer names do
    not collide). A custom rule list is a sequence of ``(regex, PartitionSpec)``, first match wins."""
    if arch is None:
        seen, out = set(), []
        for rule in _ARCH_RULES["llama"] + _ARCH_RULES["gpt2"]:
            if rule[0] not in seen:
                seen.add(rule[0])
                out.append(rule)
        return tuple(out)
    if arch not in _ARCH_RULES:
        raise ValueError(f"default_rules: unknown arch {arch!r}; one of {tuple(_ARCH_RULES)}")
    return _ARCH_RULES[arch]


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_string(path) -> str:
    """``("params", "layers", "attn", "q_proj", "kernel")`` keys joined by ``/``."""
    return "/".join(_key_name(k) for k in path)


def _match(path: str, rules: Rules) -> P | None:
    for pattern, spec in rules:
        if re.search(pattern, path):
            return spec
    return None


def _leaf_spec(path: str, rules: Rules) -> P:
    spec = _match(path, rules)
    if spec is not None:
        return spec
    parent, _, leaf = path.rpartition("/")
    if leaf in ("a", "b"):
        kernel = _match(f"{parent}/kernel" if parent else "kernel", rules)
        if kernel is not None and len(kernel) == 2:
            return P(kernel[0], None) if leaf == "a" else P(None, kernel[1])
    if leaf in _QUANTIZED and parent.rpartition("/")[2] == "kernel":
        kernel = _match(parent, rules)
        if kernel is not None and len(kernel) == 2:
            return _QUANTIZED[leaf](kernel)
    return P()


# quantised kernels (rlhf_jax.model.quant) follow their float kernel's spec: int8 codes [Din, Dout]
# as the kernel, per-column scales [Dout] as its columns; NF4's row-major flat codes and block maxima
# split like the kernel's rows
_QUANTIZED = {"q": lambda k: k, "scale": lambda k: P(k[1]), "packed": lambda k: P(k[0]), "absmax": lambda k: P(k[0])}


def spec_for(path: str, rules: Rules | None = None) -> P:
    """The rule spec of the leaf at ``path`` before any divisibility check (LoRA ``a``/``b`` and
    quantised kernels derived from their kernel; replicated when nothing matches). A leaf of the
    layer stack (a ``layers/`` segment in its path) gets an unsharded leading layer axis in front
    of its rule's spec, so rules are written for one layer's ``[Din, Dout]``."""
    rules = default_rules() if rules is None else rules
    spec = _leaf_spec(path, rules)
    if len(spec) and re.search(rf"(^|/){LAYERS}/", path):
        return P(None, *spec)
    return spec


def fit_spec(spec: P, shape: tuple[int, ...], axis_sizes: dict[str, int]) -> P:
    """``spec`` made valid for an array of ``shape`` on a mesh with ``axis_sizes``: a dimension
    not divisible by the product of its mesh axes is replicated instead (so is a whole leaf
    whose rank does not match the rule, e.g. a scalar counter); axes the mesh lacks are dropped."""
    if len(spec) > len(shape):
        return P()
    out = []
    for dim, entry in zip(shape, spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        axes = tuple(a for a in axes if a in axis_sizes)
        size = math.prod(axis_sizes[a] for a in axes)
        if not axes or dim % size:
            out.append(None)
        else:
            out.append(axes[0] if len(axes) == 1 else axes)
    return P(*out)


def param_specs(tree: PyTree, axis_sizes: dict[str, int], rules: Rules | None = None) -> PyTree:
    """A ``PartitionSpec`` for every array leaf of ``tree`` (see the module docstring), checked
    against ``axis_sizes`` (e.g. ``dict(mesh.shape)``) by :func:`fit_spec`."""
    def one(path, leaf):
        return fit_spec(spec_for(path_string(path), rules), tuple(np.shape(leaf)), axis_sizes)

    return jax.tree_util.tree_map_with_path(one, tree)


def param_shardings(tree: PyTree, mesh: Mesh, rules: Rules | None = None) -> PyTree:
    """A ``NamedSharding`` on ``mesh`` for every array leaf of ``tree``: parameters, LoRA
    adapters, heads, or a whole train state with its optimizer state.

    Rules are matched on each leaf's ``/``-joined path (default: :func:`default_rules` for both
    architectures). **A dimension whose size is not divisible by the size of its mesh axes falls
    back to replication on that dimension** (e.g. a vocabulary of 97 on ``tensor=2``), and a leaf
    whose rank does not fit its rule is replicated whole, so any tree can be placed on any mesh.
    """
    axis_sizes = dict(mesh.shape)
    return jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec),
                                  param_specs(tree, axis_sizes, rules),
                                  is_leaf=lambda x: isinstance(x, P))


def _put(x, sharding: NamedSharding, dtype):
    if dtype is not None and jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        x = x.astype(dtype)
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    host = np.asarray(x)  # every process holds the same full value (same checkpoint / seed)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_params(tree: PyTree, mesh: Mesh | None, *, rules: Rules | None = None, dtype=None) -> PyTree:
    """``tree`` placed on ``mesh`` with :func:`param_shardings`. ``dtype`` (e.g.
    ``jnp.bfloat16``) first casts the floating-point leaves -- for a base loaded in float32 and
    held in bfloat16; leave it ``None`` for adapters and optimizer state (float32 master copies).
    ``mesh=None``: ``tree`` is returned unchanged (apart from ``dtype``).

    Several processes: each passes the same full values (from the same checkpoint or seed); each
    keeps only the shards of its own devices. The scales of quantised kernels keep their dtype."""
    if dtype is not None:  # cast first (outside quantised kernels), then place
        tree = jax.tree_util.tree_map(
            lambda x: x if is_quantized(x) or not jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
            else x.astype(dtype), tree, is_leaf=is_quantized)
    if mesh is None:
        return tree
    shardings = param_shardings(tree, mesh, rules)
    return jax.tree_util.tree_map(lambda x, s: _put(x, s, None), tree, shardings)
