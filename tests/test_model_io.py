"""Checkpoint loading: sharded files, tokenizer, clear errors; bfloat16; heads."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.model import (CheckpointError, ModelConfig, Transformer, init_head, last_token_index,
                            load_pretrained, score_head, value_head)
from tests.conftest import build_hf_checkpoint, left_padded_batch


def _tiny_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(90)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def test_sharded_checkpoint_and_tokenizer(tmp_path):
    import torch

    tmodel = build_hf_checkpoint("llama", tmp_path / "one")
    tmodel.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    _tiny_tokenizer(tmp_path / "sharded")
    cfg, params, tok = load_pretrained(str(tmp_path / "sharded"))
    assert tok.pad_token_id == 0 and tok.encode("w1 w2", add_special_tokens=False) == [5, 6]
    ref_cfg, ref_params, _ = load_pretrained(str(tmp_path / "one"), tokenizer=False)
    assert cfg == ref_cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref_params)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    build_hf_checkpoint("gpt2", tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "m", broken)
    t2 = dict(tensors)
    del t2["transformer.h.1.mlp.c_fc.weight"]
    t2["transformer.h.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(t2, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors \['transformer.h.1.mlp.c_fc.weight'\]"):
        load_pretrained(str(broken), tokenizer=False)
    t2["transformer.h.1.mlp.c_fc.weight"] = tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(t2, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['transformer.h.0.extra.weight'\]"):
        load_pretrained(str(broken), tokenizer=False)


def test_unsupported_architecture_and_hub_id(tmp_path):
    build_hf_checkpoint("gpt2", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "t5"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture model_type='t5'"):
        load_pretrained(str(tmp_path / "m"), tokenizer=False)
    with pytest.raises(CheckpointError, match="never downloads"):
        load_pretrained("Qwen/Qwen2-0.5B")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(str(tmp_path / "empty"))


def test_bfloat16_parameters_keep_float32_logits(hf_checkpoints):
    folder, _ = hf_checkpoints["llama"]
    cfg32, p32, _ = load_pretrained(folder, tokenizer=False)
    cfg16, p16, _ = load_pretrained(folder, dtype="bfloat16", tokenizer=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(p16))
    tokens, mask = left_padded_batch()
    l32 = Transformer(cfg32).apply({"params": p32}, tokens, attention_mask=mask).logits
    l16 = Transformer(cfg16).apply({"params": p16}, tokens, attention_mask=mask).logits
    assert l16.dtype == jnp.float32
    real = mask.astype(bool)
    err = np.max(np.abs(np.asarray(l16)[real] - np.asarray(l32)[real]))
    assert 0 < err < 0.1 * np.max(np.abs(np.asarray(l32)))


def test_heads_read_last_real_token():
    # last_token_index: left padding -> T-1; right padding -> sum(mask)-1
    mask = jnp.array([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(last_token_index(mask)), [3, 2, 0])
    hidden = jnp.arange(3 * 4 * 2, dtype=jnp.float32).reshape(3, 4, 2)
    head = {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array(0.5)}
    # row 0 reads h[0,3] = (6, 7): 6 - 14 + 0.5 = -7.5; row 1 h[1,2] = (12, 13): -13.5; row 2 h[2,0] = (16, 17): -17.5
    np.testing.assert_allclose(np.asarray(score_head(head, hidden, mask)), [-7.5, -13.5, -17.5])
    v = value_head(head, hidden)
    assert v.shape == (3, 4)
    np.testing.assert_allclose(np.asarray(v[0, 0]), 0 - 2 + 0.5)
    h0 = init_head(jax.random.PRNGKey(0), 2, std=0.0)
    assert not np.any(np.asarray(h0["kernel"]))


def test_hidden_states_and_no_logits():
    cfg = ModelConfig(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2)
    model = Transformer(cfg)
    tokens = jnp.ones((2, 5), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    out = model.apply({"params": params}, tokens, return_hidden=True, compute_logits=False)
    assert out.logits is None and out.hidden.shape == (2, 5, 16)
    assert cfg.num_params() == sum(x.size for x in jax.tree_util.tree_leaves(params))


def test_safetensors_reader_matches_the_safetensors_library_for_each_dtype(tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    from rlhf_jax.model.hf_io import _SafetensorsFolder

    rng = np.random.default_rng(0)
    tensors = {"f32": rng.normal(size=(3, 5)).astype(np.float32), "f16": rng.normal(size=(4,)).astype(np.float16),
               "bf16": rng.normal(size=(2, 3, 2)).astype(ml_dtypes.bfloat16), "i64": np.arange(7),
               "scalar": np.array(2.5, np.float32)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, ref = _SafetensorsFolder(str(tmp_path)), load_file(tmp_path / "model.safetensors")
    assert sorted(ours) == sorted(ref) and len(ours) == 5
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(ours[k].astype(np.float64), ref[k].astype(np.float64))


def test_truncated_safetensors_file_is_named(tmp_path):
    build_hf_checkpoint("llama", tmp_path / "m")
    fp = tmp_path / "m" / "model.safetensors"
    data = fp.read_bytes()
    fp.write_bytes(data[:-64])
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor .* is truncated"):
        load_pretrained(str(tmp_path / "m"), tokenizer=False)
    fp.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_pretrained(str(tmp_path / "m"), tokenizer=False)
