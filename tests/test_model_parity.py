"""Our Flax model against PyTorch `transformers` on the same checkpoint: logits on a left-padded
batch, full and with cached incremental decoding, for GPT-2, Llama (GQA, untied) and Qwen2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.model import Transformer, init_cache, load_pretrained
from tests.conftest import left_padded_batch

KINDS = ["gpt2", "llama", "qwen2", "llama3_rope"]


def torch_logits(model, tokens, mask):
    import torch

    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers_left_padded(hf_checkpoints, kind):
    folder, tmodel = hf_checkpoints[kind]
    cfg, params, _ = load_pretrained(folder, tokenizer=False)
    tokens, mask = left_padded_batch()
    ours = Transformer(cfg).apply({"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)).logits
    ref = torch_logits(tmodel, tokens, mask)
    real = mask.astype(bool)
    assert np.max(np.abs(np.asarray(ours)[real] - ref[real])) <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_matches_full_forward_and_transformers(hf_checkpoints, kind):
    folder, tmodel = hf_checkpoints[kind]
    cfg, params, _ = load_pretrained(folder, tokenizer=False)
    model = Transformer(cfg)
    tokens, mask = left_padded_batch(seed=1, length=12)
    prompt_len = 7
    cache = init_cache(cfg, tokens.shape[0], tokens.shape[1])
    step = jax.jit(lambda p, t, m, c: model.apply({"params": p}, t, attention_mask=m, cache=c))
    out = step(params, tokens[:, :prompt_len], mask[:, :prompt_len], cache)
    pieces = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(prompt_len, tokens.shape[1]):  # one token at a time
        out = step(params, tokens[:, t:t + 1], mask[:, t:t + 1], cache)
        cache = out.cache
        pieces.append(np.asarray(out.logits))
    cached = np.concatenate(pieces, axis=1)
    full = np.asarray(model.apply({"params": params}, tokens, attention_mask=mask).logits)
    ref = torch_logits(tmodel, tokens, mask)
    real = mask.astype(bool)
    assert np.max(np.abs(cached[real] - full[real])) <= 1e-4
    assert np.max(np.abs(cached[real] - ref[real])) <= 1e-4
    assert int(cache.index) == tokens.shape[1]


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_logits_match_transformers_with_the_scale_options(hf_checkpoints, kind):
    """Unrolled layers + remat + query-chunked attention (a chunk that does not divide T), set
    through load_pretrained's overrides: still transformers' logits within 1e-4."""
    folder, tmodel = hf_checkpoints[kind]
    cfg, params, _ = load_pretrained(folder, tokenizer=False, scan_layers=False, remat="block",
                                     attention="chunked", attention_chunk=4)
    assert (cfg.scan_layers, cfg.remat, cfg.attention) == (False, "block", "chunked")
    tokens, mask = left_padded_batch()
    ours = jax.jit(lambda p: Transformer(cfg).apply({"params": p}, jnp.asarray(tokens),
                                                    attention_mask=jnp.asarray(mask)).logits)(params)
    real = mask.astype(bool)
    assert np.max(np.abs(np.asarray(ours)[real] - torch_logits(tmodel, tokens, mask)[real])) <= 1e-4
