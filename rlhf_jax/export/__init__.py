"""Export: merged Hugging Face folders, PEFT-format adapters (both ways) and reward models as
Hugging Face sequence classifiers. Needs ``safetensors`` only; ``torch``/``transformers``/``peft``
are needed to *load* the results, not to write them."""

from __future__ import annotations

from typing import Any

from rlhf_jax.export._common import ExportError
from rlhf_jax.export.hf import (SCORE_BIAS_KEY, hf_config_dict, hf_model_type, hf_tensors, save_hf_folder,
                                save_hf_reward_model)
from rlhf_jax.export.generation import generation_config_dict
from rlhf_jax.export.peft_format import load_peft_adapter, peft_config_dict, save_peft_adapter
from rlhf_jax.export.peft_reward import REWARD_HEAD, save_peft_reward_adapter
from rlhf_jax.lora import LoraConfig
from rlhf_jax.model.config import ModelConfig

FORMATS = ("hf", "peft")


def export_from_checkpoint(model_config: ModelConfig, base: Any, adapter: Any, lora_config: LoraConfig | None,
                           out: str, *, format: str = "hf", tokenizer: Any = None, generation_config: Any = None,
                           base_model_name_or_path: str = "", hf_model_type: str | None = None) -> str:
    """Export the trees restored from a training checkpoint (the CLI's ``export`` command).

    Args:
      base: the base parameter tree the run trained over.
      adapter: the trained adapter: ``state.params`` of a LoRA SFT run, ``state.params["policy"]``
        of a PPO run, ``state.params["lora"]`` of a reward run; ``None`` when the run fine-tuned the
        full model (then ``base`` is the trained tree and only ``format="hf"`` applies).
      lora_config: the adapter's config (its ``alpha / rank`` scale); ``None`` with ``adapter=None``.
      out: output folder.
      format: ``"hf"`` (adapter merged into a full Hugging Face folder, see :func:`save_hf_folder`)
        or ``"peft"`` (the adapter alone, see :func:`save_peft_adapter`).
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "hf":
        return save_hf_folder(out, model_config, base, tokenizer=tokenizer, lora=adapter, lora_config=lora_config,
                              generation_config=generation_config, hf_model_type=hf_model_type)
    if adapter is None or lora_config is None:
        raise ExportError("format='peft' needs the adapter tree and its LoraConfig (a fully fine-tuned model "
                          "has no adapter: use format='hf')")
    save_peft_adapter(out, model_config, adapter, lora_config, base_model_name_or_path=base_model_name_or_path)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


__all__ = [
    "ExportError", "FORMATS", "REWARD_HEAD", "SCORE_BIAS_KEY", "export_from_checkpoint", "generation_config_dict",
    "hf_config_dict", "hf_model_type", "hf_tensors", "load_peft_adapter", "peft_config_dict", "save_hf_folder",
    "save_hf_reward_model", "save_peft_adapter", "save_peft_reward_adapter",
]
