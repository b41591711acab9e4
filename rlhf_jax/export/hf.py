"""Hugging Face folders from our trees: ``config.json`` + ``model.safetensors`` (+ tokenizer files and
``generation_config.json``) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads, and a
reward model as ``*ForSequenceClassification``.

The tensor names come from :func:`rlhf_jax.model.hf_name_table` (the import table; stacked layers are
unstacked, one tensor per layer), so a folder written here reads back through
:func:`rlhf_jax.model.load_pretrained` bit-identically. A quantised base is refused (dequantise it
explicitly with :func:`rlhf_jax.model.dequantize_base`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import numpy as np

from rlhf_jax.export._common import (ExportError, check_params, ensure_dir, name_table, to_numpy,
                                     write_json, write_safetensors)
from rlhf_jax.lora import LoraConfig, lora_config_of, merge_lora, outer_params
from rlhf_jax.model.config import ModelConfig

MODEL_TYPES = ("llama", "qwen2", "gpt2")
_CAUSAL_LM = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
_SEQ_CLS = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
            "gpt2": "GPT2ForSequenceClassification"}

SCORE_BIAS_KEY = "score_bias"
"""Extra ``config.json`` field of an exported reward model: the constant that Hugging Face's
bias-free ``score`` layer leaves out (``our score = HF logit + config.score_bias``)."""


def hf_model_type(config: ModelConfig, hint: str | None = None) -> str:
    """The Hugging Face ``model_type`` for ``config``.

    Rule (``config.json`` keeps no record of where a llama-family config came from):
    ``arch="gpt2"`` -> ``gpt2``; q/k/v bias without an output-projection bias -> ``qwen2`` (Qwen2's
    attention has exactly that shape, Llama's ``attention_bias`` puts a bias on all four);
    anything else -> ``llama``. ``hint`` overrides the guess when the weights fit it (e.g.
    ``"qwen2"`` for a Qwen2 model) and is an error when they do not.
    """
    if config.arch == "gpt2":
        if hint not in (None, "gpt2"):
            raise ExportError(f"hf_model_type={hint!r} does not fit arch='gpt2'")
        return "gpt2"
    if hint is not None and hint not in ("llama", "qwen2"):
        raise ExportError(f"hf_model_type must be one of {MODEL_TYPES}, got {hint!r}")
    guess = "qwen2" if config.qkv_bias and not config.o_bias else "llama"
    mt = hint or guess
    if mt == "qwen2" and not (config.qkv_bias and not config.o_bias and not config.mlp_bias):
        raise ExportError(
            "qwen2 needs q/k/v bias and no output-projection or MLP bias; this config has "
            f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}, mlp_bias={config.mlp_bias}")
    if mt == "llama" and config.qkv_bias != config.o_bias:
        raise ExportError(
            "llama's attention_bias puts a bias on q, k, v and o together; this config has "
            f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}")
    return mt


def _eos(config: ModelConfig):
    ids = config.eos_ids
    return None if not ids else ids[0] if len(ids) == 1 else list(ids)


def hf_config_dict(config: ModelConfig, *, model_type: str | None = None, dtype: str | None = None,
                   sequence_classification: bool = False) -> dict:
    """A Hugging Face ``config.json`` dict for ``config``.

    Args:
      model_type: ``llama``/``qwen2``/``gpt2``; ``None``: :func:`hf_model_type`'s rule.
      dtype: the tensors' dtype name written as ``dtype`` (and ``torch_dtype`` for transformers 4);
        default ``config.dtype``.
      sequence_classification: ``*ForSequenceClassification`` with one label instead of the LM.
    """
    mt = hf_model_type(config, model_type)
    out: dict[str, Any] = {
        "model_type": mt,
        "architectures": [(_SEQ_CLS if sequence_classification else _CAUSAL_LM)[mt]],
        "vocab_size": config.vocab_size,
        "bos_token_id": config.bos_token_id, "eos_token_id": _eos(config), "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype": dtype or config.dtype, "torch_dtype": dtype or config.dtype,
        "use_cache": True, "initializer_range": 0.02,
    }
    if sequence_classification:
        out.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if mt == "gpt2":
        if config.head_dim * config.num_heads != config.hidden_size or config.num_kv_heads != config.num_heads:
            raise ExportError("gpt2 needs head_dim * num_heads == hidden_size and no grouped-query "
                              f"attention; got head_dim={config.head_dim}, num_heads={config.num_heads}, "
                              f"num_kv_heads={config.num_kv_heads}, hidden_size={config.hidden_size}")
        out.update(n_embd=config.hidden_size, n_layer=config.num_layers, n_head=config.num_heads,
                   n_inner=config.intermediate_size, n_positions=config.max_position_embeddings,
                   layer_norm_epsilon=config.norm_eps, activation_function=config.activation,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                   add_cross_attention=False)
        return out
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    legacy_scaling = None
    if config.rope_scaling is not None:
        s = config.rope_scaling
        legacy_scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                          "high_freq_factor": s.high_freq_factor,
                          "original_max_position_embeddings": s.original_max_position_embeddings}
        rope.update(legacy_scaling)
    out.update(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
               num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
               num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
               max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.norm_eps,
               hidden_act=config.activation, attention_dropout=0.0,
               # transformers 5 reads rope_parameters; 4.x reads rope_theta + rope_scaling
               rope_parameters=rope, rope_theta=config.rope_theta, rope_scaling=legacy_scaling)
    if mt == "llama":
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias, pretraining_tp=1)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.num_layers,
                   layer_types=["full_attention"] * config.num_layers)
    return out


def hf_tensors(config: ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """``{Hugging Face name: array}`` for the base ``params`` (kernels transposed back to
    ``torch.nn.Linear``'s ``[out, in]``; each tensor keeps its dtype)."""
    flat = check_params(config, params)
    return {name: to_numpy(flat[e.path] if e.layer is None else flat[e.path][e.layer], transpose=e.transpose)
            for name, e in name_table(config).items()}


def _dtype_name(tensors: Mapping[str, np.ndarray]) -> str:
    names = {a.dtype.name for a in tensors.values()}
    return names.pop() if len(names) == 1 else "float32"


def _merged(config: ModelConfig, params: Any, lora: Any, lora_config: LoraConfig | None) -> Any:
    if lora is None:
        return params
    if lora_config is None:
        raise ExportError("an adapter was given without its LoraConfig (needed for the scale alpha / rank)")
    check_params(config, params)
    from rlhf_jax.export.peft_format import check_adapter

    check_adapter(config, lora, lora_config)
    return merge_lora(params, lora, scale=lora_config.scale)


def write_generation_config(path: str, config: ModelConfig, generation_config: Any = None) -> None:
    """``generation_config.json`` with the bos/eos/pad ids, updated with ``generation_config`` (a
    dict or a ``transformers.GenerationConfig``)."""
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": _eos(config), "pad_token_id": config.pad_token_id}
    if generation_config is not None:
        extra = generation_config.to_diff_dict() if hasattr(generation_config, "to_diff_dict") else dict(generation_config)
        gen.update(extra)
    write_json({k: v for k, v in gen.items() if v is not None}, os.path.join(path, "generation_config.json"))


def save_hf_folder(path: str, config: ModelConfig, params: Any, *, tokenizer: Any = None, lora: Any = None,
                   lora_config: LoraConfig | None = None, generation_config: Any = None,
                   hf_model_type: str | None = None) -> str:
    """Write a Hugging Face causal-LM folder that ``AutoModelForCausalLM.from_pretrained(path)`` loads.

    Writes ``config.json``, ``model.safetensors`` (one file; tensors in the parameters' dtype, so
    bfloat16 parameters give a bfloat16 checkpoint), ``generation_config.json`` and, when given, the
    tokenizer's files. With ``lora`` the adapter is merged first: ``W + (alpha / R) A B``.

    Args:
      path: output folder (created; existing files of the same names are overwritten).
      config: the model's :class:`ModelConfig`.
      params: the base parameter tree.
      tokenizer: anything with ``save_pretrained(path)`` (a ``transformers`` tokenizer).
      lora: an adapter tree to merge (``layers/attn/q_proj/{a,b}``...), with ``lora_config``.
      generation_config: extra ``generation_config.json`` fields (dict or ``GenerationConfig``).
      hf_model_type: ``"llama"``/``"qwen2"``/``"gpt2"``; default: the rule of
        :func:`rlhf_jax.export.hf_model_type` (q/k/v bias without o bias -> qwen2).
    Returns:
      ``path``.
    """
    merged = _merged(config, params, lora, lora_config)
    tensors = hf_tensors(config, merged)
    path = ensure_dir(path)
    write_json(hf_config_dict(config, model_type=hf_model_type, dtype=_dtype_name(tensors)),
               os.path.join(path, "config.json"))
    write_safetensors(tensors, os.path.join(path, "model.safetensors"))
    write_generation_config(path, config, generation_config)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def save_hf_reward_model(path: str, config: ModelConfig, base: Any, reward_model: Any, *, tokenizer: Any = None,
                         hf_model_type: str | None = None) -> str:
    """Write a :class:`rlhf_jax.train.reward.RewardModel` as a Hugging Face
    ``*ForSequenceClassification`` folder with one label.

    Our score is ``gain * (h_last . w + b) + bias``. The reward adapter is merged into the base and
    ``score.weight [1, D] = gain * w``. Hugging Face's ``score`` layer has no bias and Llama's final
    RMSNorm has no additive term, so the constant ``gain * b + bias`` has nowhere exact to go: it is
    stored in ``config.json`` as ``score_bias`` and

        our score == HF logits[:, 0] + config.score_bias

    (a constant shift changes no preference probability, ranking or accuracy; add it back when
    absolute values matter, e.g. PPO rewards normalised to mean 0).

    Hugging Face reads the score at the rightmost token that is not ``pad_token_id`` (left or right
    padding; with left padding pass ``position_ids`` counted from the mask, as we do), so real
    tokens must never equal the pad id. The pad id is ``config.pad_token_id``, else the tokenizer's.

    Args:
      base: the shared base tree (ignored when the reward model holds a full tree of its own).
      reward_model: a :class:`rlhf_jax.scoring.RewardModel` (``model``: an adapter over ``base``,
        a full tree or ``None``; ``head``, ``gain``, ``bias``).
    """
    rm = reward_model
    lc = lora_config_of(rm.model)
    weights = _merged(config, base, rm.model.tree, lc) if lc is not None else outer_params(base, rm.model)
    pad = config.pad_token_id
    if pad is None and tokenizer is not None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ExportError("a sequence-classification export needs pad_token_id (Hugging Face finds each "
                          "row's last token as the rightmost token != pad_token_id); set "
                          "ModelConfig.pad_token_id or pass a tokenizer with a pad token")
    if pad in config.eos_ids:
        warnings.warn(f"pad_token_id {pad} is also an EOS id: Hugging Face will score the token before a "
                      "final EOS, while rlhf_jax scores the last token of the attention mask", stacklevel=2)
    config = config.replace(pad_token_id=pad)
    head = rm.head
    tensors = {k: v for k, v in hf_tensors(config, weights).items() if k != "lm_head.weight"}
    dtype = tensors["model.embed_tokens.weight" if config.arch != "gpt2" else "transformer.wte.weight"].dtype
    kernel = float(rm.gain) * np.asarray(head["kernel"], np.float64)
    tensors["score.weight"] = kernel.reshape(1, -1).astype(dtype)
    hf = hf_config_dict(config, model_type=hf_model_type, dtype=_dtype_name(tensors), sequence_classification=True)
    hf[SCORE_BIAS_KEY] = float(rm.gain) * float(np.asarray(head["bias"])) + float(rm.bias)
    path = ensure_dir(path)
    write_json(hf, os.path.join(path, "config.json"))
    write_safetensors(tensors, os.path.join(path, "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
