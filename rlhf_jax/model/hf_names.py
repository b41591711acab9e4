"""The correspondence between our parameter paths and Hugging Face tensor names.

One table serves import (``hf_io.load_pretrained``) and export: each entry maps our path (a tuple
of names) to the Hugging Face name and whether the matrix is transposed (``torch.nn.Linear`` stores
``[out, in]``; GPT-2's ``Conv1D`` already stores ``[in, out]``).
"""

from __future__ import annotations

from rlhf_jax.model.config import ModelConfig

Path = tuple[str, ...]


def hf_name_table(config: ModelConfig) -> dict[Path, tuple[str, bool]]:
    """``{our path: (hf tensor name, transpose)}`` for every base parameter of ``config``."""
    if config.arch == "gpt2":
        return _gpt2_table(config)
    return _llama_table(config)


def _llama_table(c: ModelConfig) -> dict[Path, tuple[str, bool]]:
    t: dict[Path, tuple[str, bool]] = {("embed", "embedding"): ("model.embed_tokens.weight", False)}
    for i in range(c.num_layers):
        L, hf = f"layers_{i}", f"model.layers.{i}"
        t[(L, "attn_norm", "scale")] = (f"{hf}.input_layernorm.weight", False)
        t[(L, "mlp_norm", "scale")] = (f"{hf}.post_attention_layernorm.weight", False)
        for proj, bias in (("q_proj", c.qkv_bias), ("k_proj", c.qkv_bias), ("v_proj", c.qkv_bias),
                           ("o_proj", c.o_bias)):
            t[(L, "attn", proj, "kernel")] = (f"{hf}.self_attn.{proj}.weight", True)
            if bias:
                t[(L, "attn", proj, "bias")] = (f"{hf}.self_attn.{proj}.bias", False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            t[(L, "mlp", proj, "kernel")] = (f"{hf}.mlp.{proj}.weight", True)
            if c.mlp_bias:
                t[(L, "mlp", proj, "bias")] = (f"{hf}.mlp.{proj}.bias", False)
    t[("final_norm", "scale")] = ("model.norm.weight", False)
    if not c.tie_word_embeddings:
        t[("lm_head",)] = ("lm_head.weight", True)
    return t


def _gpt2_table(c: ModelConfig) -> dict[Path, tuple[str, bool]]:
    t: dict[Path, tuple[str, bool]] = {
        ("embed", "embedding"): ("transformer.wte.weight", False),
        ("pos_embed", "embedding"): ("transformer.wpe.weight", False),
        ("final_norm", "scale"): ("transformer.ln_f.weight", False),
        ("final_norm", "bias"): ("transformer.ln_f.bias", False),
    }
    for i in range(c.num_layers):
        L, hf = f"layers_{i}", f"transformer.h.{i}"
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            t[(L, ours, "scale")] = (f"{hf}.{theirs}.weight", False)
            t[(L, ours, "bias")] = (f"{hf}.{theirs}.bias", False)
        for mod, proj in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
            t[(L, mod, proj, "kernel")] = (f"{hf}.{mod}.{proj}.weight", False)
            t[(L, mod, proj, "bias")] = (f"{hf}.{mod}.{proj}.bias", False)
    if not c.tie_word_embeddings:
        t[("lm_head",)] = ("lm_head.weight", True)
    return t


# Tensors a checkpoint may carry that are not parameters (buffers of older versions), or that
# duplicate a tied matrix.
IGNORABLE_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
