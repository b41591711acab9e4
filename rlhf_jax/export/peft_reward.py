"""A reward model's LoRA adapter in PEFT's sequence-classification form: ``task_type="SEQ_CLS"``,
the LoRA tensors as :func:`rlhf_jax.export.save_peft_adapter` writes them, and the score head saved
whole (``modules_to_save=["score"]``, tensor ``base_model.model.score.weight [1, D]``), so that

    model = AutoModelForSequenceClassification.from_pretrained(base_folder, num_labels=1)
    model = PeftModel.from_pretrained(model, adapter_folder)

scores as our reward model does, up to a constant: Hugging Face's ``score`` layer has no bias, so
``gain * b + bias`` is written to ``reward_head.json`` as ``score_bias`` (the same field
:func:`rlhf_jax.export.save_hf_reward_model` puts in ``config.json``)::

    our score == logits[:, 0] + score_bias
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rlhf_jax.export._common import ExportError, ensure_dir, write_json, write_safetensors
from rlhf_jax.export.hf import SCORE_BIAS_KEY
from rlhf_jax.export.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREFIX, adapter_tensors, peft_config_dict
from rlhf_jax.lora import lora_config_of
from rlhf_jax.model.config import ModelConfig

REWARD_HEAD = "reward_head.json"


def save_peft_reward_adapter(path: str, config: ModelConfig, reward_model: Any, *,
                             base_model_name_or_path: str = "") -> str:
    """Write the adapter and score head of ``reward_model`` (a :class:`rlhf_jax.scoring.RewardModel`
    whose ``model`` is an :class:`rlhf_jax.lora.Adapter` over the base of ``config``) as a PEFT
    ``SEQ_CLS`` adapter folder; returns ``path``.

    Raises:
      ExportError: the reward model holds no adapter (a full tree, or a head on the frozen base: use
        :func:`rlhf_jax.export.save_hf_reward_model`), or the adapter does not fit ``config``.
    """
    rm = reward_model
    lc = lora_config_of(rm.model)
    if lc is None:
        raise ExportError("a PEFT reward adapter needs a reward model trained with LoRA; this one "
                          f"{'has no model of its own' if rm.model is None else 'is a full parameter tree'}: "
                          "export it as a Hugging Face sequence-classification folder (--format hf)")
    tensors, written = adapter_tensors(config, rm.model.tree, lc)
    kernel = float(rm.gain) * np.asarray(rm.head["kernel"], np.float64)
    if kernel.shape != (config.hidden_size,):
        raise ExportError(f"the score head's kernel has shape {kernel.shape}, expected ({config.hidden_size},)")
    tensors[PREFIX + "score.weight"] = kernel.reshape(1, -1).astype(np.float32)
    meta = peft_config_dict(config, written, lc, base_model_name_or_path=base_model_name_or_path)
    meta.update(task_type="SEQ_CLS", modules_to_save=["score"])
    path = ensure_dir(path)
    write_json(meta, os.path.join(path, ADAPTER_CONFIG))
    write_safetensors(tensors, os.path.join(path, ADAPTER_WEIGHTS))
    bias = float(rm.gain) * float(np.asarray(rm.head["bias"])) + float(rm.bias)
    write_json({SCORE_BIAS_KEY: bias, "num_labels": 1,
                "rule": "rlhf_jax score = AutoModelForSequenceClassification logits[:, 0] + score_bias"},
               os.path.join(path, REWARD_HEAD))
    return path
