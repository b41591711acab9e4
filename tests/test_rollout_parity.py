"""Generation against independent references: greedy decoding token-identical to PyTorch
`transformers` ``generate`` on the same checkpoint (left-padded batch, EOS stopping), and the
returned log-probs equal to those of a full forward pass over the finished sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig, init_lora
from rlhf_jax.model import Transformer, load_pretrained
from rlhf_jax.rollout import Sampler, SamplingConfig, generate
from tests.conftest import left_padded_batch

PAD = 0
N_NEW = 16


def hf_greedy(tmodel, tokens, mask, *, eos, max_new_tokens):
    import torch

    with torch.no_grad():
        out = tmodel.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                              attention_mask=torch.tensor(mask, dtype=torch.long),
                              do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0,
                              eos_token_id=list(eos) if eos else None, pad_token_id=PAD,
                              num_beams=1, temperature=None, top_k=None, top_p=None)
    return out.numpy()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_greedy_matches_transformers_generate(hf_checkpoints, kind):
    folder, tmodel = hf_checkpoints[kind]
    cfg, params, _ = load_pretrained(folder, tokenizer=False)
    model = Transformer(cfg)
    tokens, mask = left_padded_batch(seed=3, batch=4, length=9)  # row r has 2r pad tokens

    # Make a token that transformers' greedy decoding emits mid-way in row 0 the EOS id, so that
    # some rows stop early and others may run to max_new_tokens.
    free = hf_greedy(tmodel, tokens, mask, eos=None, max_new_tokens=N_NEW)
    eos = int(free[0, tokens.shape[1] + 5])
    assert eos != PAD
    sampler = Sampler(model, SamplingConfig(max_new_tokens=N_NEW, greedy=True, eos_ids=(eos,), pad_id=PAD))
    r = sampler({"params": params}, tokens, mask, jax.random.PRNGKey(0))
    ref = hf_greedy(tmodel, tokens, mask, eos=(eos,), max_new_tokens=N_NEW)
    ours = np.asarray(r.tokens)
    # transformers stops when every row is done, so its output may be shorter; the rest is pad.
    np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)
    assert np.all(ours[:, ref.shape[1]:] == PAD)
    assert bool(r.eos_reached[0]) and int(r.lengths[0]) <= 6
    resp = np.asarray(r.response_tokens)
    for b in range(tokens.shape[0]):  # the response stops at the first EOS, pad after
        n = int(r.lengths[b])
        hits = np.nonzero(resp[b] == eos)[0]
        assert bool(r.eos_reached[b]) == (hits.size > 0 and hits[0] == n - 1)
        assert np.all(resp[b, n:] == PAD)


def full_forward_logprobs(model, variables, rollout, temperature):
    logits = model.apply(variables, rollout.tokens, attention_mask=rollout.attention_mask).logits
    p, n = rollout.prompt_length, rollout.response_mask.shape[1]
    logp = jax.nn.log_softmax(logits[:, p - 1:p - 1 + n] / temperature, axis=-1)
    return np.asarray(jnp.take_along_axis(logp, rollout.response_tokens[..., None], axis=-1)[..., 0])


@pytest.mark.parametrize("kind,adapter", [("llama", False), ("gpt2", True)])
def test_logprobs_match_full_forward(hf_checkpoints, kind, adapter):
    folder, _ = hf_checkpoints[kind]
    cfg, params, _ = load_pretrained(folder, tokenizer=False)
    model = Transformer(cfg, lora=LoraConfig(rank=4) if adapter else None)
    variables = {"params": params}
    if adapter:  # a trained-looking adapter: B nonzero
        lora = init_lora(model, jax.random.PRNGKey(1))
        lora = jax.tree_util.tree_map_with_path(
            lambda path, x: 0.3 * jax.random.normal(jax.random.PRNGKey(2), x.shape)
            if path[-1].key == "b" else x, lora)
        variables = {"params": params, "lora": lora}
    tokens, mask = left_padded_batch(seed=4, batch=4, length=8)
    # temperature and top-k on: the log-probs are of softmax(logits / T), before filtering
    config = SamplingConfig(max_new_tokens=20, temperature=0.8, top_k=20, eos_ids=tuple(range(2, 10)), pad_id=PAD)
    r = jax.jit(lambda v, t, m, k: generate(v, t, m, k, model=model, config=config))(
        variables, tokens, mask, jax.random.PRNGKey(5))
    ref = full_forward_logprobs(model, variables, r, 0.8)
    real = np.asarray(r.response_mask).astype(bool)
    assert real.sum() >= 8 and (~real).sum() > 0  # some rows stopped at an EOS
    assert np.max(np.abs(np.asarray(r.logprobs)[real] - ref[real])) <= 1e-4
    assert np.all(np.asarray(r.logprobs)[~real] == 0.0)
