"""The model layer: configs, the Flax transformer (stacked layers under a scan, remat, attention
kernels), KV cache, heads, Hugging Face import, quantised frozen bases (QLoRA)."""

from rlhf_jax.model.attention import AttentionMask, attend
from rlhf_jax.model.cache import KVCache, init_cache
from rlhf_jax.model.config import ModelConfig, RopeScaling
from rlhf_jax.model.heads import init_head, last_token_index, score_head, value_head
from rlhf_jax.model.hf_io import CheckpointError, Pretrained, config_from_hf, load_pretrained, load_tokenizer, params_from_tensors
from rlhf_jax.model.hf_names import HFTensor, hf_module_table, hf_name_table
from rlhf_jax.model.quant import (NF4_LEVELS, Int8Kernel, NF4Kernel, dequantize_base, is_quantized, quantize_base,
                                  quantized_leaves, quantized_matmul)
from rlhf_jax.model.transformer import (ModelOutput, Transformer, head_weight, lm_logits, positions_from_mask,
                                       positions_from_segments)

__all__ = [
    "AttentionMask", "CheckpointError", "HFTensor", "Int8Kernel", "KVCache", "ModelConfig", "ModelOutput",
    "NF4Kernel", "NF4_LEVELS", "Pretrained", "RopeScaling", "Transformer", "attend", "config_from_hf",
    "dequantize_base", "head_weight", "hf_module_table", "hf_name_table", "init_cache", "init_head",
    "is_quantized", "last_token_index", "lm_logits", "load_pretrained", "load_tokenizer", "params_from_tensors",
    "positions_from_mask", "positions_from_segments", "quantize_base", "quantized_leaves", "quantized_matmul",
    "score_head", "value_head",
]
