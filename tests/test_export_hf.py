"""Hugging Face folder export: `transformers` loads what we write and its logits equal ours (adapter
merged, hand-made configs, bfloat16), our importer reads it back bit-identically, tokenizer and
generation config files, the llama/qwen2 rule and its errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.export import ExportError, hf_config_dict, hf_model_type, save_hf_folder
from rlhf_jax.lora import LoraConfig, merge_lora
from rlhf_jax.model import ModelConfig, RopeScaling, load_pretrained
from tests.conftest import left_padded_batch
from tests.test_export_utils import (load_hf, max_diff, ours_logits, random_lora, random_params, tiny_tokenizer,
                                     torch_forward)

pytest.importorskip("torch")

LORA = LoraConfig(rank=4, alpha=8.0)  # every dense layer, scale 2


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "llama3_rope"])
def test_merged_adapter_export_matches_transformers_and_reimports(hf_checkpoints, tmp_path, kind):
    folder, original = hf_checkpoints[kind]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lora = random_lora(cfg, LORA, seed=1)
    out = save_hf_folder(tmp_path / kind, cfg, base, lora=lora, lora_config=LORA)

    hf_cfg = json.loads(open(os.path.join(out, "config.json")).read())
    want_type = {"llama3_rope": "llama"}.get(kind, kind)
    assert hf_cfg["model_type"] == want_type
    tokens, mask = left_padded_batch(seed=2)
    ours = ours_logits(cfg, base, tokens, mask, lora=lora, lora_config=LORA)  # adapter applied, not merged
    tmodel = load_hf(out)
    assert type(tmodel).__name__ == {"gpt2": "GPT2LMHeadModel", "qwen2": "Qwen2ForCausalLM"}.get(kind, "LlamaForCausalLM")
    assert max_diff(ours, torch_forward(tmodel, tokens, mask).logits.numpy(), mask) <= 1e-4
    # the adapter really moved the logits
    assert max_diff(ours, torch_forward(original, tokens, mask).logits.numpy(), mask) > 1e-2

    cfg2, params2, _ = load_pretrained(out, tokenizer=False)
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, merge_lora(base, lora, scale=LORA.scale))


HAND_MADE = {
    # Qwen2-style: q/k/v bias only, tied, llama3 rope scaling, explicit head_dim != D / N
    "qwen2": ModelConfig(arch="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=1,
                         head_dim=12, intermediate_size=40, max_position_embeddings=64, rope_theta=300.0,
                         rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=16),
                         qkv_bias=True, tie_word_embeddings=True, norm_eps=1e-5, pad_token_id=0, eos_token_id=(2, 3)),
    # Llama with attention_bias and mlp_bias, untied
    "llama": ModelConfig(arch="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=48, max_position_embeddings=64, qkv_bias=True, o_bias=True, mlp_bias=True,
                         bos_token_id=1, eos_token_id=2),
    # GPT-2 with its own (untied) LM head and exact GELU
    "gpt2": ModelConfig(arch="gpt2", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=80,
                        max_position_embeddings=32, norm_eps=1e-5, activation="gelu", qkv_bias=True, o_bias=True,
                        mlp_bias=True, tie_word_embeddings=False, eos_token_id=2),
}


@pytest.mark.parametrize("kind", sorted(HAND_MADE))
def test_hand_made_configs_load_in_transformers(tmp_path, kind):
    cfg = HAND_MADE[kind]
    params = random_params(cfg)
    out = save_hf_folder(tmp_path / kind, cfg, params)
    tokens, mask = left_padded_batch(seed=3)
    tmodel = load_hf(out)
    assert tmodel.config.model_type == kind
    assert max_diff(ours_logits(cfg, params, tokens, mask), torch_forward(tmodel, tokens, mask).logits.numpy(),
                    mask) <= 1e-4
    if kind != "gpt2":  # the import table reads GPT-2 checkpoints as tied (as Hugging Face saves them)
        cfg2, params2, _ = load_pretrained(out, tokenizer=False)
        assert cfg2 == cfg
        jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_bfloat16_parameters_export_as_bfloat16(hf_checkpoints, tmp_path):
    import torch
    from safetensors import safe_open

    folder, _ = hf_checkpoints["qwen2"]
    cfg16, p16, _ = load_pretrained(folder, dtype="bfloat16", tokenizer=False)
    out = save_hf_folder(tmp_path / "bf16", cfg16, p16)
    with safe_open(os.path.join(out, "model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads(open(os.path.join(out, "config.json")).read())["dtype"] == "bfloat16"
    assert os.path.getsize(os.path.join(out, "model.safetensors")) < os.path.getsize(os.path.join(folder, "model.safetensors")) * 0.6
    _, back, _ = load_pretrained(out, dtype="bfloat16", tokenizer=False)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)),
                           back, p16)
    # the same bf16 values, computed in float32 on both sides
    tmodel = load_hf(out, dtype=torch.float32)
    cfg32 = cfg16.replace(dtype="float32")
    p32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), p16)
    tokens, mask = left_padded_batch()
    assert max_diff(ours_logits(cfg32, p32, tokens, mask), torch_forward(tmodel, tokens, mask).logits.numpy(), mask) <= 1e-4


def test_tokenizer_and_generation_config_files(hf_checkpoints, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    folder, _ = hf_checkpoints["llama"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    cfg = cfg.replace(eos_token_id=(2, 3))
    out = save_hf_folder(tmp_path / "tok", cfg, base, tokenizer=tiny_tokenizer(),
                         generation_config={"max_new_tokens": 7, "do_sample": False})
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.encode("w1 w2", add_special_tokens=False) == [5, 6] and tok.pad_token_id == 0
    gen = GenerationConfig.from_pretrained(out, local_files_only=True)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id, gen.max_new_tokens) == (1, [2, 3], 0, 7)
    cfg2, _, tok2 = load_pretrained(out)
    assert cfg2.eos_token_id == (2, 3) and tok2.convert_ids_to_tokens(2) == "</s>"


def test_model_type_rule_and_errors():
    base = dict(arch="llama", vocab_size=11, hidden_size=8, num_layers=1, num_heads=2)
    assert hf_model_type(ModelConfig(**base)) == "llama"
    assert hf_model_type(ModelConfig(**base, qkv_bias=True)) == "qwen2"
    assert hf_model_type(ModelConfig(**base, qkv_bias=True, o_bias=True)) == "llama"
    assert hf_model_type(ModelConfig(**base, qkv_bias=True), "qwen2") == "qwen2"
    with pytest.raises(ExportError, match="qkv_bias=False, o_bias=True"):
        hf_model_type(ModelConfig(**base, o_bias=True))
    with pytest.raises(ExportError, match="qwen2 needs q/k/v bias.*o_bias=True"):
        hf_model_type(ModelConfig(**base, qkv_bias=True, o_bias=True), "qwen2")
    with pytest.raises(ExportError, match="mlp_bias=True"):
        hf_model_type(ModelConfig(**base, qkv_bias=True, mlp_bias=True))
    with pytest.raises(ExportError, match="does not fit arch='gpt2'"):
        hf_model_type(ModelConfig(**{**base, "arch": "gpt2"}), "llama")
    with pytest.raises(ExportError, match="no grouped-query"):
        hf_config_dict(ModelConfig(**{**base, "arch": "gpt2"}, num_kv_heads=1))


def test_params_that_do_not_fit_the_config_are_named(hf_checkpoints, tmp_path):
    folder, _ = hf_checkpoints["llama"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    small = dict(base, layers={k: v for k, v in base["layers"].items() if k != "attn"})
    with pytest.raises(ExportError, match=r"missing \['layers/attn/k_proj/kernel'"):
        save_hf_folder(tmp_path / "x", cfg, small)
    with pytest.raises(ExportError, match=r"wrong shapes \['embed/embedding \(97, 32\) \(config wants \(98, 32\)\)'"):
        save_hf_folder(tmp_path / "x", cfg.replace(vocab_size=98), base)
    with pytest.raises(ExportError, match="without its LoraConfig"):
        save_hf_folder(tmp_path / "x", cfg, base, lora=random_lora(cfg, LORA))
    assert not os.path.exists(tmp_path / "x")


def test_nonfinite_tensor_is_named_and_nothing_is_written(hf_checkpoints, tmp_path):
    folder, _ = hf_checkpoints["llama"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    bad = dict(base, lm_head=base["lm_head"].at[3, 5].set(jnp.inf))
    with pytest.raises(ExportError, match=r"tensor lm_head.weight holds non-finite values"):
        save_hf_folder(tmp_path / "x", cfg, bad)
    assert not os.path.exists(tmp_path / "x" / "model.safetensors")


def test_export_imports_without_torch():
    code = ("import sys, rlhf_jax.export, rlhf_jax.export.hf, rlhf_jax.export.peft_format; "
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
