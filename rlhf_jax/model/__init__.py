"""The model layer: configs, the Flax transformer, KV cache, heads, Hugging Face import."""

from rlhf_jax.model.cache import KVCache, init_cache
from rlhf_jax.model.config import ModelConfig, RopeScaling
from rlhf_jax.model.heads import init_head, last_token_index, score_head, value_head
from rlhf_jax.model.hf_io import CheckpointError, Pretrained, config_from_hf, load_pretrained, load_tokenizer, params_from_tensors
from rlhf_jax.model.hf_names import hf_name_table
from rlhf_jax.model.transformer import (ModelOutput, Transformer, lm_logits, positions_from_mask,
                                       positions_from_segments)

__all__ = [
    "CheckpointError", "KVCache", "ModelConfig", "ModelOutput", "Pretrained", "RopeScaling",
    "Transformer", "config_from_hf", "hf_name_table", "init_cache", "init_head", "last_token_index", "lm_logits",
    "load_pretrained", "load_tokenizer", "params_from_tensors", "positions_from_mask", "positions_from_segments", "score_head",
    "value_head",
]
