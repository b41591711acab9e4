"""PEFT-format adapters: `peft.PeftModel.from_pretrained` loads what we write onto the Hugging Face
base with our logits (Linear and GPT-2 Conv1D layers, partial targets); adapters created by `peft`
itself load into our tree; round trip; errors name what does not fit."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rlhf_jax.export import ExportError, export_from_checkpoint, load_peft_adapter, save_peft_adapter
from rlhf_jax.lora import LoraConfig, adapted_layers, init_lora, merge_lora
from rlhf_jax.model import Transformer, load_pretrained
from tests.conftest import left_padded_batch
from tests.test_export_utils import load_hf, max_diff, ours_logits, random_lora, torch_forward

pytest.importorskip("torch")

CASES = {
    # kind: (our LoraConfig, PEFT target_modules we expect, adapted HF modules per layer)
    "llama": (LoraConfig(rank=4, alpha=8.0), ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                             "v_proj"], 7),
    # GPT-2 Conv1D; the attention's c_proj but not the MLP's
    "gpt2": (LoraConfig(rank=2, alpha=6.0, targets=("c_attn", "attn/c_proj")), ["attn.c_proj", "c_attn"], 2),
    # one layer only -> full module names
    "qwen2": (LoraConfig(rank=3, alpha=3.0, targets=("layers_1/attn/q_proj", "v_proj")),
              ["model.layers.1.self_attn.q_proj", "v_proj"], None),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_peft_loads_our_adapter_with_our_logits(hf_checkpoints, tmp_path, kind):
    pytest.importorskip("peft")
    from peft import PeftModel

    lora_config, targets, per_layer = CASES[kind]
    folder, original = hf_checkpoints[kind]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lora = random_lora(cfg, lora_config, seed=3)
    out = save_peft_adapter(tmp_path / kind, cfg, lora, lora_config, base_model_name_or_path=folder)
    meta = json.loads(open(os.path.join(out, "adapter_config.json")).read())
    assert (meta["r"], meta["lora_alpha"], meta["target_modules"]) == (lora_config.rank, lora_config.alpha, targets)
    assert meta["fan_in_fan_out"] == (kind == "gpt2") and meta["use_rslora"] is False

    peft_model = PeftModel.from_pretrained(load_hf(folder), out).eval()
    hf_lora = sorted(n[: -len(".lora_A")] for n, _ in peft_model.named_modules() if n.endswith(".lora_A"))
    selected = [lora_config.layer_selection("/".join(layer), cfg.num_layers) for layer in adapted_layers(lora)]
    assert len(hf_lora) == sum(map(sum, selected))  # the stacked adapter unstacked, selected layers only
    if per_layer:
        assert len(hf_lora) == per_layer * cfg.num_layers
    if kind == "gpt2":
        assert not [n for n in hf_lora if "mlp" in n]
    tokens, mask = left_padded_batch(seed=4)
    ours = ours_logits(cfg, base, tokens, mask, lora=lora, lora_config=lora_config)
    assert max_diff(ours, torch_forward(peft_model, tokens, mask).logits.numpy(), mask) <= 1e-4
    assert max_diff(ours, torch_forward(original, tokens, mask).logits.numpy(), mask) > 1e-2  # B != 0 moved them

    back, back_config = load_peft_adapter(out, cfg)  # round trip
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, lora)
    assert (back_config.rank, back_config.alpha, back_config.scale) == (lora_config.rank, lora_config.alpha,
                                                                        lora_config.scale)
    # the returned targets select exactly the adapted layers
    fresh = jax.eval_shape(lambda k: init_lora(Transformer(cfg, lora=back_config), k), jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(back)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_adapter_made_by_peft_merges_into_our_base(hf_checkpoints, tmp_path, kind):
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    folder, _ = hf_checkpoints[kind]
    targets = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}[kind]
    peft_model = get_peft_model(load_hf(folder), PeftLoraConfig(r=4, lora_alpha=12, target_modules=targets,
                                                                 fan_in_fan_out=kind == "gpt2", lora_dropout=0.1))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B != 0
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    peft_model.save_pretrained(tmp_path / "a")
    peft_model.eval()

    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lora, lora_config = load_peft_adapter(tmp_path / "a", cfg)
    assert (lora_config.rank, lora_config.scale, lora_config.dropout) == (4, 3.0, 0.1)
    assert sorted(lora_config.targets) == sorted(targets)
    merged = merge_lora(base, lora, scale=lora_config.scale)
    tokens, mask = left_padded_batch(seed=5)
    ref = torch_forward(peft_model, tokens, mask).logits.numpy()
    assert max_diff(ours_logits(cfg, merged, tokens, mask), ref, mask) <= 1e-4


def _write_adapter(folder, cfg, lora, lora_config, **config_changes):
    save_peft_adapter(folder, cfg, lora, lora_config)
    meta = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    meta.update(config_changes)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(meta, f)
    return folder


def test_mismatches_are_named(hf_checkpoints, tmp_path):
    folder, _ = hf_checkpoints["llama"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lc = LoraConfig(rank=2, alpha=4.0, targets=("q_proj",))
    lora = random_lora(cfg, lc)
    # an adapter layer the model lacks, and a rank that differs from the config's
    q = lora["layers"]["attn"]["q_proj"]
    extra = {"layers": {"attn": {"q_proj": q, "x_proj": q}}}
    with pytest.raises(ExportError, match=r"layers not in the base model: \['layers/attn/x_proj'\]"):
        save_peft_adapter(tmp_path / "x", cfg, extra, lc)
    with pytest.raises(ExportError, match=r"layers/attn/q_proj has a \(2, 32, 2\), b \(2, 2, 32\).*rank 3 wants "
                                          r"a \(2, 32, 3\)"):
        save_peft_adapter(tmp_path / "x", cfg, lora, LoraConfig(rank=3, alpha=4.0))
    with pytest.raises(ExportError, match="layers not in the base model"):  # merged export checks too
        export_from_checkpoint(cfg, base, extra, lc, str(tmp_path / "x"), format="hf")

    # an adapter for another base: a 2-layer model's adapter on a 1-layer, wider model
    good = save_peft_adapter(tmp_path / "good", cfg, lora, lc)
    other = cfg.replace(num_layers=1, hidden_size=48)
    with pytest.raises(ExportError, match=r"modules that are not dense layers of the llama model \(1 layers.*\): "
                                          r"\['model.layers.1.self_attn.q_proj'\].*model.layers.0.self_attn.q_proj: "
                                          r"lora_A \(2, 32\), lora_B \(32, 2\) but the base layer is \[in=48, out=32\]"):
        load_peft_adapter(good, other)

    # PEFT options that are not plain LoRA
    for change, message in [({"use_rslora": True}, "use_rslora=True"), ({"use_dora": True}, "use_dora=True"),
                            ({"bias": "all"}, "bias='all'"), ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
                            ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"), ({"peft_type": "IA3"}, "peft_type='IA3'")]:
        bad = _write_adapter(tmp_path / "opt", cfg, lora, lc, **change)
        with pytest.raises(ExportError, match=f"unsupported PEFT LoRA options: .*{message}"):
            load_peft_adapter(bad, cfg)

    # tensors other than lora_A / lora_B (e.g. a DoRA magnitude)
    bad = _write_adapter(tmp_path / "dora", cfg, lora, lc)
    tensors = load_file(os.path.join(bad, "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = np.ones(64, np.float32)
    save_file(tensors, os.path.join(bad, "adapter_model.safetensors"))
    with pytest.raises(ExportError, match=r"other than lora_A/lora_B weights: \['base_model.model.model.layers.0"
                                          r".self_attn.q_proj.lora_magnitude_vector'\]"):
        load_peft_adapter(bad, cfg)
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"]
    tensors["base_model.model.lm_head.lora_A.weight"] = np.ones((2, 32), np.float32)
    tensors["base_model.model.lm_head.lora_B.weight"] = np.ones((97, 2), np.float32)
    save_file(tensors, os.path.join(bad, "adapter_model.safetensors"))
    with pytest.raises(ExportError, match=r"LM head is not supported\): \['lm_head'\]"):
        load_peft_adapter(bad, cfg)
    os.remove(os.path.join(bad, "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="no adapter_model.safetensors"):
        load_peft_adapter(bad, cfg)


def test_export_from_checkpoint_both_formats(hf_checkpoints, tmp_path):
    folder, _ = hf_checkpoints["qwen2"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lc = LoraConfig(rank=2, alpha=2.0)
    lora = random_lora(cfg, lc, seed=7)
    hf = export_from_checkpoint(cfg, base, lora, lc, str(tmp_path / "hf"), format="hf")
    peft_dir = export_from_checkpoint(cfg, base, lora, lc, str(tmp_path / "peft"), format="peft")
    _, merged, _ = load_pretrained(hf, tokenizer=False)
    back, back_config = load_peft_adapter(peft_dir, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, merged, merge_lora(base, back, scale=back_config.scale))
    full = export_from_checkpoint(cfg, merged, None, None, str(tmp_path / "full"))  # full fine-tuning
    jax.tree_util.tree_map(np.testing.assert_array_equal, load_pretrained(full, tokenizer=False).params, merged)
    with pytest.raises(ExportError, match="format='peft' needs the adapter"):
        export_from_checkpoint(cfg, merged, None, None, str(tmp_path / "p"), format="peft")
    with pytest.raises(ExportError, match="format must be one of"):
        export_from_checkpoint(cfg, base, lora, lc, str(tmp_path / "p"), format="gguf")
