"""A tiny word-level world for the trainer tests: tokenizer, model config, base parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(16)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def tiny_config():
    from rlhf_jax.model import ModelConfig

    return ModelConfig(vocab_size=len(WORDS), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=64, max_position_embeddings=32, pad_token_id=0, eos_token_id=2,
                       bos_token_id=1)


def tiny_base(config, *, seed=0, head_scale=8.0):
    """Random base whose LM head is scaled up so that the next-token distribution is neither
    uniform nor collapsed (entropy ~2.5 nats of 3.0)."""
    from rlhf_jax.model import Transformer

    base = Transformer(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    return dict(base, lm_head=base["lm_head"] * head_scale)


def tiny_prompts(n=64):
    return [" ".join(f"w{(i * j + i) % 16}" for j in range(1 + i % 4)) for i in range(n)]
