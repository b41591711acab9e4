"""The correspondence between our parameter paths and Hugging Face tensor names.

One table serves import (``hf_io.load_pretrained``) and export: each Hugging Face tensor maps to our
leaf path, the index on that leaf's layer axis (the blocks are stacked under ``layers``: one Hugging
Face tensor per layer fills one slice) and whether the matrix is transposed (``torch.nn.Linear``
stores ``[out, in]``; GPT-2's ``Conv1D`` already stores ``[in, out]``).
"""

from __future__ import annotations

from typing import NamedTuple

from rlhf_jax.lora import LAYERS
from rlhf_jax.model.config import ModelConfig

Path = tuple[str, ...]


class HFTensor(NamedTuple):
    """Where one Hugging Face tensor lives in our tree."""

    path: Path
    """Our leaf path, e.g. ``("layers", "attn", "q_proj", "kernel")``."""
    layer: int | None
    """Index on the leaf's leading layer axis; ``None`` for a leaf outside the layer stack."""
    transpose: bool
    """Whether our matrix is the transpose of the Hugging Face one."""


def hf_name_table(config: ModelConfig) -> dict[str, HFTensor]:
    """``{hf tensor name: HFTensor(path, layer, transpose)}`` for every base parameter of
    ``config`` (one entry per layer for the stacked leaves)."""
    if config.arch == "gpt2":
        return _gpt2_table(config)
    return _llama_table(config)


def hf_module_table(config: ModelConfig) -> dict[str, tuple[Path, int]]:
    """``{hf module name: (our dense layer path, layer index)}`` for every block kernel (the
    layers LoRA can adapt), e.g. ``"model.layers.0.self_attn.q_proj" -> (("layers", "attn",
    "q_proj"), 0)``."""
    return {name[: -len(".weight")]: (e.path[:-1], e.layer) for name, e in hf_name_table(config).items()
            if e.path[-1] == "kernel" and e.layer is not None}


def _llama_table(c: ModelConfig) -> dict[str, HFTensor]:
    t = {"model.embed_tokens.weight": HFTensor(("embed", "embedding"), None, False)}
    for i in range(c.num_layers):
        hf = f"model.layers.{i}"
        t[f"{hf}.input_layernorm.weight"] = HFTensor((LAYERS, "attn_norm", "scale"), i, False)
        t[f"{hf}.post_attention_layernorm.weight"] = HFTensor((LAYERS, "mlp_norm", "scale"), i, False)
        for proj, bias in (("q_proj", c.qkv_bias), ("k_proj", c.qkv_bias), ("v_proj", c.qkv_bias),
                           ("o_proj", c.o_bias)):
            t[f"{hf}.self_attn.{proj}.weight"] = HFTensor((LAYERS, "attn", proj, "kernel"), i, True)
            if bias:
                t[f"{hf}.self_attn.{proj}.bias"] = HFTensor((LAYERS, "attn", proj, "bias"), i, False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            t[f"{hf}.mlp.{proj}.weight"] = HFTensor((LAYERS, "mlp", proj, "kernel"), i, True)
            if c.mlp_bias:
                t[f"{hf}.mlp.{proj}.bias"] = HFTensor((LAYERS, "mlp", proj, "bias"), i, False)
    t["model.norm.weight"] = HFTensor(("final_norm", "scale"), None, False)
    if not c.tie_word_embeddings:
        t["lm_head.weight"] = HFTensor(("lm_head",), None, True)
    return t


def _gpt2_table(c: ModelConfig) -> dict[str, HFTensor]:
    t = {
        "transformer.wte.weight": HFTensor(("embed", "embedding"), None, False),
        "transformer.wpe.weight": HFTensor(("pos_embed", "embedding"), None, False),
    }
    for i in range(c.num_layers):
        hf = f"transformer.h.{i}"
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            t[f"{hf}.{theirs}.weight"] = HFTensor((LAYERS, ours, "scale"), i, False)
            t[f"{hf}.{theirs}.bias"] = HFTensor((LAYERS, ours, "bias"), i, False)
        for mod, proj in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
            t[f"{hf}.{mod}.{proj}.weight"] = HFTensor((LAYERS, mod, proj, "kernel"), i, False)
            t[f"{hf}.{mod}.{proj}.bias"] = HFTensor((LAYERS, mod, proj, "bias"), i, False)
    t["transformer.ln_f.weight"] = HFTensor(("final_norm", "scale"), None, False)
    t["transformer.ln_f.bias"] = HFTensor(("final_norm", "bias"), None, False)
    if not c.tie_word_embeddings:
        t["lm_head.weight"] = HFTensor(("lm_head",), None, True)
    return t


# Tensors a checkpoint may carry that are not parameters (buffers of older versions), or that
# duplicate a tied matrix.
IGNORABLE_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
