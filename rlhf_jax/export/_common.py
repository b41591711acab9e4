"""Shared helpers of the exporters: the error type, expected parameter shapes, safetensors I/O."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import _flatten, _unflatten
from rlhf_jax.model.config import ModelConfig
from rlhf_jax.model.hf_names import HFTensor, hf_module_table, hf_name_table
from rlhf_jax.model.quant import quantized_leaves

Path = tuple[str, ...]

__all__ = ["ExportError"]


class ExportError(ValueError):
    """Weights, an adapter or a config that cannot be written (or read) in the asked format; the
    message names what does not match."""


@functools.lru_cache(maxsize=16)
def param_shapes(config: ModelConfig) -> dict[Path, tuple[int, ...]]:
    """``{path: shape}`` of every base parameter of ``config`` (``jax.eval_shape``: nothing is
    allocated)."""
    from rlhf_jax.model.transformer import Transformer

    shapes = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    return {path: tuple(leaf.shape) for path, leaf in _flatten(shapes["params"]).items()}


def name_table(config: ModelConfig) -> dict[str, HFTensor]:
    """:func:`rlhf_jax.model.hf_name_table` (one table for import and export)."""
    return dict(hf_name_table(config))


def module_table(config: ModelConfig) -> dict[tuple[Path, int], str]:
    """``{(our stacked dense layer path, layer index): Hugging Face module name}`` for every block
    kernel (the layers LoRA can adapt), e.g. ``(("layers", "attn", "q_proj"), 0) ->
    "model.layers.0.self_attn.q_proj"``."""
    return {where: name for name, where in hf_module_table(config).items()}


def layer_name(layer: Path, index: int) -> str:
    """The per-layer name of one layer of a stacked dense layer, as :class:`LoraConfig` targets
    see it: ``(("layers", "attn", "q_proj"), 1) -> "layers_1/attn/q_proj"``."""
    return "/".join((f"{layer[0]}_{index}",) + layer[1:])


def flatten(tree: Any) -> dict[Path, Any]:
    """``{path: leaf}`` of a nested dict (a Flax ``FrozenDict`` too)."""
    from flax.core import unfreeze

    return _flatten(unfreeze(tree))


def check_params(config: ModelConfig, params: Any, *, what: str = "params") -> dict[Path, Any]:
    """Flatten ``params`` and check it has exactly the paths and shapes ``config`` implies (and no
    quantised kernel: export refuses them rather than silently writing dequantised weights)."""
    quantized = quantized_leaves(params)
    if quantized:
        raise ExportError(f"{what} hold quantised kernels ({quantized[:3]}{'...' if len(quantized) > 3 else ''}); "
                          "exporting writes float weights: call rlhf_jax.model.dequantize_base(params, dtype) "
                          "first (the quantised model's weights, not the original ones)")
    flat = flatten(params)
    want = param_shapes(config)
    missing = sorted("/".join(p) for p in want if p not in flat)
    extra = sorted("/".join(p) for p in flat if p not in want)
    wrong = sorted(f"{'/'.join(p)} {tuple(np.shape(flat[p]))} (config wants {s})" for p, s in want.items()
                   if p in flat and tuple(np.shape(flat[p])) != s)
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    if wrong:
        problems.append(f"wrong shapes {wrong}")
    if problems:
        raise ExportError(f"{what} do not match the ModelConfig ({config.arch}, {config.num_layers} layers, "
                          f"D={config.hidden_size}): " + "; ".join(problems))
    return flat


def to_numpy(x: Any, *, transpose: bool = False, dtype: Any = None) -> np.ndarray:
    """A contiguous host array (``bfloat16`` stays ``ml_dtypes.bfloat16``)."""
    a = np.asarray(x if dtype is None else jnp.asarray(x).astype(dtype))
    return np.ascontiguousarray(a.T if transpose else a)


def write_safetensors(tensors: dict[str, np.ndarray], filename: str) -> None:
    """Save with ``{"format": "pt"}`` metadata, which ``transformers`` and ``peft`` expect.
    Refuses (nothing written) when a tensor holds a NaN or an infinity, naming it."""
    from safetensors.numpy import save_file

    for name, a in tensors.items():
        if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16":
            if not np.all(np.isfinite(a.astype(np.float32))):
                raise ExportError(f"tensor {name} holds non-finite values (NaN or inf); refusing to write {filename}")

    save_file(tensors, filename, metadata={"format": "pt"})


def write_json(obj: Any, filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def ensure_dir(path: Any) -> str:
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    return path


unflatten = _unflatten
