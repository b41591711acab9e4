"""A reward model on disk: ``reward_model.safetensors`` (the model's arrays and the head) and
``reward_config.json`` (what the model is, the adapter config, the normalisation)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import Adapter, LoraConfig, _flatten, _unflatten, stack_layer_modules
from rlhf_jax.scoring.reward_model import RewardModel

WEIGHTS = "reward_model.safetensors"
CONFIG = "reward_config.json"
KINDS = ("adapter", "full", "none")


def model_kind(rm: RewardModel) -> str:
    """``"adapter"``, ``"full"`` or ``"none"`` (see :attr:`RewardModel.model`)."""
    return "none" if rm.model is None else "adapter" if isinstance(rm.model, Adapter) else "full"


def save_reward_model(path: str, rm: RewardModel) -> str:
    """Write ``path/reward_model.safetensors`` + ``path/reward_config.json``; returns ``path``."""
    from safetensors.numpy import save_file

    kind = model_kind(rm)
    tree = {"head": rm.head}
    if kind != "none":
        tree["model"] = rm.model.tree if kind == "adapter" else rm.model
    flat = {"/".join(k): np.asarray(v, np.float32) for k, v in _flatten(tree).items()}
    bad = [k for k, v in flat.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"save_reward_model: tensor {bad[0]} holds non-finite values; refusing to write {path}")
    os.makedirs(path, exist_ok=True)
    save_file(flat, os.path.join(path, WEIGHTS))
    meta = {"model": kind, "gain": float(rm.gain), "bias": float(rm.bias),
            "lora": dataclasses.asdict(rm.model.config) if kind == "adapter" else None}
    with open(os.path.join(path, CONFIG), "w") as f:
        json.dump(meta, f, indent=2)
    return path


def load_reward_model(path: str) -> RewardModel:
    """The :class:`RewardModel` written by :func:`save_reward_model` (errors name the folder and
    what is missing). Files from before the blocks were stacked (``layers_0``, ``layers_1``...)
    load into the stacked layout."""
    from safetensors.numpy import load_file

    for name in (CONFIG, WEIGHTS):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{path}: no {name}; a reward model folder is written by `rlhf-jax reward` "
                                    "(or rlhf_jax.scoring.save_reward_model)")
    with open(os.path.join(path, CONFIG)) as f:
        meta = json.load(f)
    kind = meta.get("model")
    if kind not in KINDS:
        raise ValueError(f"{path}/{CONFIG}: 'model' must be one of {KINDS}, got {kind!r}")
    flat = load_file(os.path.join(path, WEIGHTS))
    tree = _unflatten({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
    model = stack_layer_modules(tree.get("model"))  # files written before the blocks were stacked
    if kind == "adapter":
        lora = LoraConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["lora"].items()})
        model = Adapter(model, lora)
    return RewardModel(model=model if kind != "none" else None, head=tree["head"], gain=float(meta["gain"]),
                       bias=float(meta["bias"]))
