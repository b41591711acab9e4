"""Helpers shared by the export tests (this module holds no tests): random adapters, our logits and
the PyTorch reference's logits on the same batch."""

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import LoraConfig, _flatten, _unflatten, init_lora
from rlhf_jax.model import Transformer


def random_lora(cfg, lora_config: LoraConfig, seed: int = 0, b_std: float = 0.2):
    """An adapter with random A and a nonzero random B (so it changes the model); the tree's
    structure is ``init_lora``'s, the values NumPy's (no XLA compilations). Rows of layers the
    targets do not select are zero, as ``init_lora`` makes them."""
    model = Transformer(cfg, lora=lora_config)
    shapes = _flatten(jax.eval_shape(lambda k: init_lora(model, k), jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)
    std = {"a": 0.3, "b": b_std}
    out = {}
    for p, s in sorted(shapes.items()):
        keep = np.asarray(lora_config.layer_selection("/".join(p[:-1]), s.shape[0]), np.float32)
        out[p] = jnp.asarray(std[p[-1]] * rng.standard_normal(s.shape) * keep[:, None, None], jnp.float32)
    return _unflatten(out)


def random_params(cfg, seed: int = 0):
    """Random base parameters of ``cfg`` (norm scales near 1, everything else N(0, 0.2^2))."""
    model = Transformer(cfg)
    shapes = _flatten(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
    rng = np.random.default_rng(seed)
    out = {}
    for p, s in sorted(shapes.items()):
        x = 0.2 * rng.standard_normal(s.shape)
        out[p] = jnp.asarray(x + 1.0 if "norm" in p[0] and p[-1] == "scale" else x, cfg.jnp_dtype)
    return _unflatten(out)


def ours_logits(cfg, params, tokens, mask, lora=None, lora_config=None):
    variables = {"params": params} if lora is None else {"params": params, "lora": lora}
    apply = jax.jit(lambda v, t, m: Transformer(cfg, lora=lora_config).apply(v, t, attention_mask=m).logits)
    return np.asarray(apply(variables, jnp.asarray(tokens), jnp.asarray(mask)))


def torch_forward(model, tokens, mask):
    """``model``'s output on a (left- or right-) padded batch, positions counted from the mask."""
    import torch

    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                     position_ids=torch.tensor(pos, dtype=torch.long))


def load_hf(path, cls_name: str = "AutoModelForCausalLM", **kwargs):
    """Load with ``transformers`` and assert that no tensor was missing, unexpected or resized."""
    import transformers

    model, info = getattr(transformers, cls_name).from_pretrained(str(path), output_loading_info=True, **kwargs)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(key), (key, info[key])
    return model.float().eval() if "dtype" not in kwargs else model.eval()


def max_diff(a, b, mask):
    real = np.asarray(mask).astype(bool)
    return float(np.max(np.abs(np.asarray(a)[real] - np.asarray(b)[real])))


def tiny_tokenizer():
    """A WordLevel tokenizer over the fixtures' 97-token vocabulary (ids 0-3 special)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(93)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
