"""Shared fixtures: tiny random Hugging Face checkpoints built with PyTorch `transformers`, saved to
disk in Hugging Face format (nothing is downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 97


def _hf_configs():
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    return {
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1,
                           eos_token_id=2, pad_token_id=0, initializer_range=0.2),
        "llama": LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=64, tie_word_embeddings=False,
                             rope_parameters={"rope_theta": 500.0, "rope_type": "default"},
                             bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2),
        "qwen2": Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=64, tie_word_embeddings=True,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2),
        "llama3_rope": LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, intermediate_size=48,
                                   max_position_embeddings=64,
                                   rope_parameters={"rope_theta": 10000.0, "rope_type": "llama3",
                                                    "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 16},
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2),
    }


def build_hf_checkpoint(kind: str, path, *, seed: int = 0):
    """Save a tiny random `transformers` causal LM of ``kind`` to ``path``; returns the torch model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_configs()[kind]).float().eval()
    with torch.no_grad():  # biases and norms are 0/1 at init: randomise so the parity test sees them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """``{kind: (folder, torch model)}`` for gpt2, llama (GQA, untied), qwen2 (qkv bias, tied)."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("hf")
    return {k: (str(root / k), build_hf_checkpoint(k, root / k)) for k in _hf_configs()}


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 10):
    """Token ids and a left-padded attention mask (row r has r*2 pad tokens)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for r in range(batch):
        mask[r, : 2 * r] = 0
        tokens[r, : 2 * r] = 0
    return tokens, mask
