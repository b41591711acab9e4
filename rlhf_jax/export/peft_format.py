"""LoRA adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Our adapter for the stacked dense layer at ``layers/attn/q_proj`` is ``a [L, Din, R]``, ``b [L, R,
Dout]``; layer ``i``'s slice has the update ``(alpha / R) x A[i] B[i]``. PEFT stores the same layer as
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight [R, Din]`` and ``...lora_B.weight
[Dout, R]`` (``torch.nn.Linear`` weights) with update ``(lora_alpha / r) B_t(A_t(x))``, so
``A_t = A^T`` and ``B_t = B^T``. GPT-2's ``Conv1D`` layers are no different: PEFT still builds
``lora_A``/``lora_B`` as ``nn.Linear`` from ``in_features -> out_features``; ``fan_in_fan_out=True``
only tells it that the *base* weight is stored ``[in, out]`` when merging.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from rlhf_jax.export._common import (ExportError, ensure_dir, flatten, layer_name, module_table, param_shapes,
                                     to_numpy, unflatten, write_json, write_safetensors)
from rlhf_jax.lora import LoraConfig
from rlhf_jax.model.config import ModelConfig

Path = tuple[str, ...]
PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# PEFT options that change the adapter's function (or the base it applies to): an adapter using any
# of them is not a plain ``W + (alpha / r) A B`` and is refused on import.
_MUST_BE_FALSY = ("use_rslora", "use_dora", "modules_to_save", "rank_pattern", "alpha_pattern",
                  "trainable_token_indices", "layer_replication", "lora_bias", "target_parameters",
                  "use_qalora", "alora_invocation_tokens", "velora_config", "monteclora_config",
                  "use_bdlora", "arrow_config", "kasa_config", "megatron_config", "lora_ga_config")
# Initialisations that leave the base weights as they are (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA
# rewrite the base, so their adapter does not apply to the original model).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


def _suffixes(name: str, sep: str) -> list[str]:
    parts = name.split(sep)
    return list(dict.fromkeys([parts[-1], sep.join(parts[-2:]), name]))


def _matches(target: str, name: str, sep: str) -> bool:
    return name == target or name.endswith(sep + target)


def choose_targets(adapted: list[str], universe: list[str], sep: str) -> list[str]:
    """The shortest names (last part, last two parts, else the full name) that select exactly
    ``adapted`` among ``universe`` under suffix matching (PEFT's list ``target_modules`` rule, and
    our ``LoraConfig.targets`` rule for plain names)."""
    chosen = set(adapted)
    out = []
    for name in adapted:
        for cand in _suffixes(name, sep):
            if all(m in chosen for m in universe if _matches(cand, m, sep)):
                out.append(cand)
                break
    return sorted(dict.fromkeys(out))


def check_adapter(config: ModelConfig, lora: Any, lora_config: LoraConfig) -> dict[Path, tuple[Any, Any]]:
    """``{stacked dense layer path: (a, b)}`` after checking that every adapted layer exists in
    ``config``'s model with matching shapes (``a [L, Din, R]``, ``b [L, R, Dout]``) and rank
    ``lora_config.rank``; errors name each mismatch."""
    flat = flatten(lora)
    shapes = param_shapes(config)
    layers = sorted({p[:-1] for p in flat})
    problems = []
    unknown = ["/".join(layer) for layer in layers if layer + ("kernel",) not in shapes]
    if unknown:
        problems.append(f"layers not in the base model: {unknown}")
    odd = sorted("/".join(p) for p in flat if p[-1] not in ("a", "b"))
    if odd:
        problems.append(f"leaves other than a/b: {odd}")
    out = {}
    for layer in layers:
        if layer + ("kernel",) not in shapes:
            continue
        a, b = flat.get(layer + ("a",)), flat.get(layer + ("b",))
        name = "/".join(layer)
        if a is None or b is None:
            problems.append(f"{name} lacks {'a' if a is None else 'b'}")
            continue
        *lead, d_in, d_out = shapes[layer + ("kernel",)]
        lead = tuple(lead)
        want_a, want_b = lead + (d_in, lora_config.rank), lead + (lora_config.rank, d_out)
        if tuple(np.shape(a)) != want_a or tuple(np.shape(b)) != want_b:
            problems.append(f"{name} has a {tuple(np.shape(a))}, b {tuple(np.shape(b))}; the base kernel "
                            f"is {lead + (d_in, d_out)} and rank {lora_config.rank} wants a {want_a}, b {want_b}")
            continue
        out[layer] = (a, b)
    if problems:
        raise ExportError("adapter does not fit the model: " + "; ".join(problems))
    if not out:
        raise ExportError("the adapter tree is empty")
    return out


def _written(config: ModelConfig, pairs: dict[Path, Any], lora_config: LoraConfig) -> list[tuple[Path, int]]:
    """The (stacked layer, index) pairs the adapter adapts: every selected layer of every
    adapted dense layer."""
    out = []
    for layer in sorted(pairs):
        sel = lora_config.layer_selection("/".join(layer), config.num_layers)
        out += [(layer, i) for i, on in enumerate(sel) if on]
    return out


def peft_config_dict(config: ModelConfig, layers: list[tuple[Path, int]], lora_config: LoraConfig, *,
                     base_model_name_or_path: str = "") -> dict:
    """PEFT's ``adapter_config.json`` for an adapter on ``layers`` (``(stacked path, index)``)."""
    table = module_table(config)
    alpha = lora_config.alpha
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path or None,
        "r": lora_config.rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": lora_config.dropout,
        "target_modules": choose_targets([table[p] for p in layers], list(table.values()), "."),
        "fan_in_fan_out": config.arch == "gpt2",  # GPT-2's Conv1D stores the base weight [in, out]
        "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }


def adapter_tensors(config: ModelConfig, lora: Any, lora_config: LoraConfig
                    ) -> tuple[dict[str, np.ndarray], list[tuple[Path, int]]]:
    """``(tensors, written)``: PEFT's float32 ``lora_A``/``lora_B`` tensors of the stacked adapter,
    one pair per layer that ``lora_config`` selects, and those ``(stacked path, index)`` layers."""
    pairs = check_adapter(config, lora, lora_config)
    table = module_table(config)
    written = _written(config, pairs, lora_config)
    if not written:
        raise ExportError(f"LoraConfig targets {lora_config.targets} select no layer of the adapter")
    tensors = {}
    for layer, i in written:
        a, b = pairs[layer]
        stem = PREFIX + table[(layer, i)]
        tensors[stem + ".lora_A.weight"] = to_numpy(a[i], transpose=True, dtype=np.float32)
        tensors[stem + ".lora_B.weight"] = to_numpy(b[i], transpose=True, dtype=np.float32)
    return tensors, written


def save_peft_adapter(path: str, config: ModelConfig, lora: Any, lora_config: LoraConfig, *,
                      base_model_name_or_path: str = "") -> str:
    """Write ``lora`` as a PEFT LoRA adapter that ``peft.PeftModel.from_pretrained(hf_model, path)``
    loads onto the Hugging Face model of ``config`` (the folder :func:`save_hf_folder` writes).

    The stacked adapter is unstacked: one ``lora_A``/``lora_B`` pair per layer that
    ``lora_config`` selects (the rows of unselected layers are zero and do nothing).
    ``target_modules`` names exactly the adapted layers (short names such as ``q_proj`` when they
    cover every layer, ``attn.c_proj`` when GPT-2's MLP ``c_proj`` is not adapted, full module names
    otherwise); ``r`` and ``lora_alpha`` give PEFT's scale ``lora_alpha / r`` = ours; no rsLoRA.
    Weights are written in float32.
    """
    tensors, written = adapter_tensors(config, lora, lora_config)
    path = ensure_dir(path)
    write_json(peft_config_dict(config, written, lora_config, base_model_name_or_path=base_model_name_or_path),
               os.path.join(path, ADAPTER_CONFIG))
    write_safetensors(tensors, os.path.join(path, ADAPTER_WEIGHTS))
    return path


def _check_peft_config(meta: dict, source: str) -> None:
    bad = []
    if str(meta.get("peft_type", "LORA")).upper() != "LORA":
        bad.append(f"peft_type={meta.get('peft_type')!r} (only LORA)")
    if meta.get("bias", "none") != "none":
        bad.append(f"bias={meta['bias']!r} (only 'none')")
    bad += [f"{k}={meta[k]!r}" for k in _MUST_BE_FALSY if meta.get(k)]
    init = meta.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        bad.append(f"init_lora_weights={init!r} (this init rewrites the base weights; convert the adapter "
                   "to plain LoRA first)")
    if bad:
        raise ExportError(f"{source}: unsupported PEFT LoRA options: {', '.join(bad)}")


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


def load_peft_adapter(path: str, config: ModelConfig) -> tuple[dict, LoraConfig]:
    """Read a PEFT LoRA adapter folder for the Hugging Face model of ``config``.

    Returns ``(lora_tree, lora_config)``: ``lora_tree`` is our adapter tree (float32, stacked:
    ``a [L, Din, R]``, ``b [L, R, Dout]``, zero rows for layers the adapter does not cover) and
    ``lora_config`` has PEFT's ``r``, ``lora_alpha``, ``lora_dropout`` and targets selecting
    exactly the adapted layers (``"layers_3/attn/q_proj"`` for a single layer), so ``merge_lora(base, lora_tree,
    scale=lora_config.scale)`` folds it into the base (e.g. an SFT adapter, before RLHF).

    Errors name what does not match: unsupported options (rsLoRA, DoRA, biases, rank/alpha
    patterns, base-rewriting inits...), tensors other than ``lora_A``/``lora_B``, modules the model
    does not have, and shapes that differ from the base layers.
    """
    from safetensors.numpy import load_file

    path = os.fspath(path)
    cfg_file, w_file = os.path.join(path, ADAPTER_CONFIG), os.path.join(path, ADAPTER_WEIGHTS)
    if not os.path.isfile(cfg_file):
        raise ExportError(f"{path}: no {ADAPTER_CONFIG}")
    if not os.path.isfile(w_file):
        raise ExportError(f"{path}: no {ADAPTER_WEIGHTS} (PyTorch .bin adapters are not read; re-save with "
                          "safe_serialization=True)")
    with open(cfg_file) as f:
        meta = json.load(f)
    _check_peft_config(meta, path)
    rank, alpha = int(meta["r"]), float(meta["lora_alpha"])
    tensors = load_file(w_file)
    by_module: dict[str, dict[str, np.ndarray]] = {}
    other = []
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            other.append(key)
        else:
            by_module.setdefault(m["module"], {})[m["which"]] = value
    if other:
        raise ExportError(f"{path}: tensors other than lora_A/lora_B weights: {sorted(other)}")
    table = module_table(config)
    inverse = {name: where for where, name in table.items()}
    prefix = "transformer." if config.arch == "gpt2" else "model."
    shapes = param_shapes(config)
    rows: dict[Path, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    unknown, problems = [], []
    for module, ab in sorted(by_module.items()):
        name = module if module in inverse else prefix + module
        if name not in inverse:
            unknown.append(module)
            continue
        layer, index = inverse[name]
        if set(ab) != {"A", "B"}:
            problems.append(f"{module} has only lora_{''.join(ab)}")
            continue
        a, b = ab["A"].astype(np.float32).T, ab["B"].astype(np.float32).T
        d_in, d_out = shapes[layer + ("kernel",)][-2:]
        if a.shape != (d_in, rank) or b.shape != (rank, d_out):
            problems.append(f"{module}: lora_A {ab['A'].shape}, lora_B {ab['B'].shape} but the base layer is "
                            f"[in={d_in}, out={d_out}] and r={rank} wants lora_A {(rank, d_in)}, lora_B {(d_out, rank)}")
            continue
        rows.setdefault(layer, {})[index] = (a, b)
    if unknown:
        problems.insert(0, f"modules that are not dense layers of the {config.arch} model ({config.num_layers} "
                           f"layers; LoRA on embeddings or the LM head is not supported): {unknown}")
    if problems:
        raise ExportError(f"{path}: adapter does not fit the model: " + "; ".join(problems))
    if not rows:
        raise ExportError(f"{path}: the adapter has no lora_A/lora_B tensors")
    import jax.numpy as jnp

    flat = {}
    for layer, got in rows.items():  # stack; layers the adapter does not cover get zero rows
        d_in, d_out = shapes[layer + ("kernel",)][-2:]
        a = np.zeros((config.num_layers, d_in, rank), np.float32)
        b = np.zeros((config.num_layers, rank, d_out), np.float32)
        for i, (ai, bi) in got.items():
            a[i], b[i] = ai, bi
        flat[layer + ("a",)], flat[layer + ("b",)] = jnp.asarray(a), jnp.asarray(b)
    lora = unflatten(flat)
    adapted = [layer_name(layer, i) for layer, got in sorted(rows.items()) for i in sorted(got)]
    universe = [layer_name(layer, i) for layer, i in table]
    lora_config = LoraConfig(rank=rank, alpha=alpha, dropout=float(meta.get("lora_dropout") or 0.0),
                             targets=tuple(choose_targets(adapted, universe, "/")))
    return lora, lora_config
