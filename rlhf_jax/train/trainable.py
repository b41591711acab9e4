"""What an algorithm trains: a LoRA adapter over the frozen base, or a full copy of it. Decided
here, once, from the config (``lora=None`` means full fine-tuning); everything downstream reads the
answer from the tree itself (:func:`rlhf_jax.lora.model_variables`)."""

from __future__ import annotations

from typing import Any

import jax

from rlhf_jax.lora import Adapter, LoraConfig, init_lora
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.scoring import copy_tree

PyTree = Any


def init_trainable(model_config: ModelConfig, base: PyTree, lora: LoraConfig | None, key: jax.Array
                   ) -> Adapter | PyTree:
    """A fresh :class:`rlhf_jax.lora.Adapter` (``B = 0``: the model equals the base) when ``lora``
    is a config, else a copy of ``base`` with its own buffers (full fine-tuning; the caller keeps
    ``base``, the step may donate the copy)."""
    if lora is None:
        return copy_tree(base)
    return Adapter(init_lora(Transformer(model_config, lora=lora), key), lora)
