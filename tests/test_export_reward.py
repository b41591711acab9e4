"""Reward model export as a Hugging Face sequence classifier: `transformers` scores equal ours minus
the constant that its bias-free `score` layer cannot hold (kept in config.json as `score_bias`), on
right-padded batches (HF's default positions) and left-padded ones (positions from the mask)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.export import SCORE_BIAS_KEY, ExportError, save_hf_reward_model
from rlhf_jax.lora import Adapter, LoraConfig, merge_lora
from rlhf_jax.model import load_pretrained
from rlhf_jax.scoring import RewardModel, reward_scores
from tests.conftest import left_padded_batch
from tests.test_export_utils import load_hf, random_lora, torch_forward

pytest.importorskip("torch")


def _reward_model(cfg, lora_config, seed=0):
    rng = np.random.default_rng(seed)
    head = {"kernel": jnp.asarray(rng.standard_normal(cfg.hidden_size) / np.sqrt(cfg.hidden_size), jnp.float32),
            "bias": jnp.asarray(0.7, jnp.float32)}
    return RewardModel(Adapter(random_lora(cfg, lora_config, seed=seed), lora_config), head, gain=2.5, bias=-0.3)


def _our_scores(rm, cfg, base, tokens, mask):
    score = jax.jit(lambda r, b, t, m: reward_scores(cfg, r, b, t, m))
    return np.asarray(score(rm, base, jnp.asarray(tokens), jnp.asarray(mask)))


def _right_padded(tokens, mask):
    """The same rows with their padding moved to the end."""
    out_t, out_m = np.zeros_like(tokens), np.zeros_like(mask)
    for r in range(tokens.shape[0]):
        real = tokens[r][mask[r] > 0]
        out_t[r, : len(real)], out_m[r, : len(real)] = real, 1
    return out_t, out_m


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_hf_sequence_classifier_scores_equal_ours(hf_checkpoints, tmp_path, kind):
    import torch

    folder, _ = hf_checkpoints[kind]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    rm = _reward_model(cfg, LoraConfig(rank=4, alpha=8.0), seed=1)
    out = save_hf_reward_model(tmp_path / kind, cfg, base, rm)

    hf_cfg = json.loads(open(os.path.join(out, "config.json")).read())
    head = rm.head
    assert hf_cfg[SCORE_BIAS_KEY] == pytest.approx(2.5 * 0.7 - 0.3)
    assert hf_cfg["architectures"][0].endswith("ForSequenceClassification") and hf_cfg["pad_token_id"] == 0
    model = load_hf(out, "AutoModelForSequenceClassification")
    assert model.config.num_labels == 1 and model.config.score_bias == hf_cfg[SCORE_BIAS_KEY]
    np.testing.assert_allclose(model.score.weight.detach().numpy(), 2.5 * np.asarray(head["kernel"])[None], rtol=1e-6)

    left_t, left_m = left_padded_batch(seed=6, batch=4, length=9)
    right_t, right_m = _right_padded(left_t, left_m)
    ours = _our_scores(rm, cfg, base, left_t, left_m)
    np.testing.assert_allclose(_our_scores(rm, cfg, base, right_t, right_m), ours, atol=1e-4)
    assert np.std(ours) > 0.1  # the rows really differ
    with torch.no_grad():  # right padding: Hugging Face's own positions are right
        right = model(input_ids=torch.tensor(right_t, dtype=torch.long),
                      attention_mask=torch.tensor(right_m, dtype=torch.long)).logits.numpy()[:, 0]
    np.testing.assert_allclose(right + model.config.score_bias, ours, atol=1e-4)
    left = torch_forward(model, left_t, left_m).logits.numpy()[:, 0]  # left padding: positions from the mask
    np.testing.assert_allclose(left + model.config.score_bias, ours, atol=1e-4)


def test_full_fine_tuned_reward_model_and_pad_errors(hf_checkpoints, tmp_path):
    folder, _ = hf_checkpoints["llama"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lc = LoraConfig(rank=2, alpha=2.0)
    rm = _reward_model(cfg, lc, seed=2)
    full = RewardModel(merge_lora(base, rm.model.tree, scale=lc.scale), rm.head, gain=rm.gain, bias=rm.bias)
    a = save_hf_reward_model(tmp_path / "a", cfg, base, rm)
    b = save_hf_reward_model(tmp_path / "b", cfg, None, full)
    from safetensors.numpy import load_file

    ta, tb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert sorted(ta) == sorted(tb) and "score.weight" in ta and "lm_head.weight" not in ta
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k])

    with pytest.raises(ExportError, match="needs pad_token_id"):
        save_hf_reward_model(tmp_path / "c", cfg.replace(pad_token_id=None), base, rm)
    with pytest.warns(UserWarning, match="pad_token_id 2 is also an EOS id"):
        save_hf_reward_model(tmp_path / "d", cfg.replace(pad_token_id=2), base, rm)
    # a head on the shared base as it is (model=None): the body is the base
    e = save_hf_reward_model(tmp_path / "e", cfg, base, RewardModel(None, rm.head, gain=rm.gain, bias=rm.bias))
    te = load_file(os.path.join(e, "model.safetensors"))
    tbase = load_file(os.path.join(folder, "model.safetensors"))
    np.testing.assert_array_equal(te["model.layers.0.self_attn.q_proj.weight"], tbase["model.layers.0.self_attn.q_proj.weight"])
