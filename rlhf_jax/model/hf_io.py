"""Load a local Hugging Face checkpoint folder: config.json + safetensors (single or sharded)
+ tokenizer files -> our ModelConfig, parameter pytree and a ``transformers`` tokenizer.

Nothing is downloaded: a path that is not a local folder is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from rlhf_jax.model.config import ModelConfig, RopeScaling
from rlhf_jax.model.hf_names import IGNORABLE_SUFFIXES, hf_name_table

SUPPORTED = {"llama": "llama", "qwen2": "llama", "mistral": "llama", "gpt2": "gpt2"}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and tensors."""


class Pretrained(NamedTuple):
    config: ModelConfig
    params: dict
    tokenizer: Any  # transformers.PreTrainedTokenizerBase or None


def _check_folder(path: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(
            f"{path!r} is not a local checkpoint folder. rlhf_jax never downloads from a hub: "
            "save the model (config.json + *.safetensors + tokenizer files) to a local folder "
            "and pass its path.")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path}: no config.json")
    return path


def config_from_hf(hf: dict, *, dtype: str = "float32") -> ModelConfig:
    """Our :class:`ModelConfig` from a Hugging Face ``config.json`` dict."""
    mt = hf.get("model_type")
    if mt not in SUPPORTED:
        raise CheckpointError(f"unsupported architecture model_type={mt!r}; supported: "
                              f"{sorted(SUPPORTED)}")
    common = dict(vocab_size=hf["vocab_size"], dtype=dtype, bos_token_id=hf.get("bos_token_id"),
                  eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"))
    if mt == "gpt2":
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if hf.get(key):
                raise CheckpointError(f"gpt2 config option {key}=True is not supported")
        return ModelConfig(arch="gpt2", hidden_size=hf["n_embd"], num_layers=hf["n_layer"],
                           num_heads=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
                           max_position_embeddings=hf["n_positions"], norm_eps=hf["layer_norm_epsilon"],
                           activation=hf.get("activation_function", "gelu_new"),
                           tie_word_embeddings=hf.get("tie_word_embeddings", True),
                           qkv_bias=True, o_bias=True, mlp_bias=True, **common)
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{mt}: sliding-window attention is not supported")
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rtype = rope.get("rope_type", legacy.get("rope_type", legacy.get("type", "default")))
    scaling = None
    if rtype == "llama3":
        src = rope if "factor" in rope else legacy
        scaling = RopeScaling(factor=src["factor"], low_freq_factor=src["low_freq_factor"],
                              high_freq_factor=src["high_freq_factor"],
                              original_max_position_embeddings=src["original_max_position_embeddings"])
    elif rtype not in ("default", None):
        raise CheckpointError(f"{mt}: rope_type={rtype!r} is not supported (default, llama3)")
    qkv_bias = mt == "qwen2" or bool(hf.get("attention_bias", False))
    return ModelConfig(arch="llama", hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                       num_heads=hf["num_attention_heads"],
                       num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                       head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
                       max_position_embeddings=hf.get("max_position_embeddings", 2048),
                       rope_theta=float(theta), rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6),
                       qkv_bias=qkv_bias, o_bias=mt != "qwen2" and bool(hf.get("attention_bias", False)),
                       mlp_bias=bool(hf.get("mlp_bias", False)), activation=hf.get("hidden_act", "silu"),
                       tie_word_embeddings=hf.get("tie_word_embeddings", False), **common)


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _safetensors_header(fp: str) -> tuple[dict, int]:
    """``({name: {dtype, shape, data_offsets}}, offset of the data)`` of a safetensors file."""
    with open(fp, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{fp}: not a safetensors file (unreadable header: {e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n


class _SafetensorsFolder(Mapping):
    """The tensors of a folder's safetensors file(s), each read on access into a NumPy array with
    a plain file read (no memory map: mapped pages would count in the process's resident memory
    until the whole load ends), so that loading never holds a second copy of the checkpoint."""

    def __init__(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(single):
            files = ["model.safetensors"]
        else:
            raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json "
                                  "(PyTorch .bin checkpoints are not read; re-save with safe_serialization)")
        self._where: dict[str, tuple[str, dict, int]] = {}
        for name in files:
            fp = os.path.join(path, name)
            if not os.path.isfile(fp):
                raise CheckpointError(f"{path}: shard {name} named in the index is missing")
            header, start = _safetensors_header(fp)
            for key, info in header.items():
                self._where[key] = (fp, info, start)

    def __getitem__(self, key) -> np.ndarray:
        import ml_dtypes

        fp, info, start = self._where[key]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{fp}: tensor {key} has unsupported dtype {info['dtype']}")
        name = _SAFETENSORS_DTYPES[info["dtype"]]
        dtype = np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)
        lo, hi = info["data_offsets"]
        count = (hi - lo) // dtype.itemsize
        x = np.fromfile(fp, dtype=dtype, count=count, offset=start + lo)
        if x.size != int(np.prod(info["shape"], dtype=np.int64)):
            raise CheckpointError(f"{fp}: tensor {key} is truncated ({x.size} of {info['shape']} values)")
        return x.reshape(info["shape"])

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def read_safetensors(path: str) -> Mapping[str, np.ndarray]:
    """The tensors of a local folder's ``model.safetensors`` (or sharded index), ``{name: array}``,
    each read from disk when accessed (for folders :func:`load_pretrained` does not take whole,
    e.g. a sequence classifier's body and score head)."""
    return _SafetensorsFolder(_check_folder(path))


def _hf_key(name: str, config: ModelConfig) -> str:
    """GPT-2 checkpoints saved from ``GPT2Model`` lack the ``transformer.`` prefix; Llama ones saved
    from the bare model lack ``model.``: our name for a checkpoint's tensor name."""
    prefix = "transformer." if config.arch == "gpt2" else "model."
    if name.startswith((prefix, "lm_head", "score", "model.")):
        return name
    return prefix + name


def params_from_tensors(tensors: Mapping[str, Any], config: ModelConfig, *, source: str = "checkpoint"
                        ) -> dict:
    """Our parameter tree from Hugging Face tensors; errors name missing and unexpected tensors and
    shapes that differ between layers. Tensors are converted one at a time (transposed and cast on
    the host); a stacked leaf is assembled in one host buffer, layer by layer, and then placed on
    the device, so the peak is the parameters plus one stacked leaf on the host."""
    names = {_hf_key(k, config): k for k in tensors}
    table = hf_name_table(config)
    missing = sorted(w for w in table if w not in names)
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing}")
    unexpected = sorted(k for k in names if k not in table and not k.endswith(IGNORABLE_SUFFIXES)
                        and not (k == "lm_head.weight" and config.tie_word_embeddings))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {unexpected} for arch {config.arch!r}")
    dt = np.dtype(config.jnp_dtype)
    by_path: dict[tuple[str, ...], list[tuple[str, Any]]] = {}
    for hf, entry in table.items():
        by_path.setdefault(entry.path, []).append((hf, entry))
    params: dict = {}
    for path, entries in by_path.items():
        buf = None
        for hf, entry in entries:
            x = np.asarray(tensors[names[hf]])
            x = np.ascontiguousarray(x.T if entry.transpose else x, dtype=dt)
            if entry.layer is None:
                buf = x
                continue
            if buf is None:
                buf = np.empty((config.num_layers,) + x.shape, dt)
            if x.shape != buf.shape[1:]:
                raise CheckpointError(f"{source}: tensor {hf} has shape {x.shape} (after transposing), but layer 0 "
                                      f"has {buf.shape[1:]}")
            buf[entry.layer] = x
            del x
        node = params
        for n in path[:-1]:
            node = node.setdefault(n, {})
        node[path[-1]] = jnp.asarray(buf)
        del buf
    return params


def load_pretrained(path: str, *, dtype: str = "float32", tokenizer: bool = True, **overrides: Any) -> Pretrained:
    """Load a local Hugging Face folder into ``(config, params, tokenizer)``.

    Args:
      path: a folder with ``config.json`` and ``model.safetensors`` (or a sharded index).
      dtype: parameter dtype, ``float32`` or ``bfloat16``.
      tokenizer: also load the tokenizer files with ``transformers.AutoTokenizer`` (offline).
      **overrides: :class:`ModelConfig` fields that are not in the checkpoint, e.g.
        ``remat="block"``, ``compute_dtype="bfloat16"``, ``attention="chunked"``,
        ``scan_layers=False``.
    """
    path = _check_folder(path)
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    config = config_from_hf(hf, dtype=dtype)
    if overrides:
        config = config.replace(**overrides)
    params = params_from_tensors(_SafetensorsFolder(path), config, source=path)
    tok = load_tokenizer(path) if tokenizer else None
    return Pretrained(config, params, tok)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tiktoken.model")
"""Files holding a tokenizer's vocabulary; a folder needs at least one (``tokenizer.json`` being
what ``save_pretrained`` writes for fast tokenizers; ``vocab.json`` goes with ``merges.txt``)."""


def load_tokenizer(path: str):
    """A ``transformers`` tokenizer from local files only.

    Raises:
      CheckpointError: the folder holds no tokenizer files (``transformers`` would otherwise build
        an empty one-token tokenizer and nothing would complain), or they cannot be loaded.
    """
    from transformers import AutoTokenizer

    _check_folder(path)
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path}: no tokenizer files: expected tokenizer.json (with tokenizer_config.json), or a vocabulary "
            "such as vocab.json + merges.txt or tokenizer.model; save the tokenizer into the folder "
            "(tokenizer.save_pretrained(folder)), or load the model with tokenizer=False and pass a tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises several types for missing files
        raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from e
    if len(tok) < 2:
        raise CheckpointError(f"{path}: the tokenizer files load into a tokenizer of {len(tok)} token(s); check "
                              "tokenizer.json / the vocabulary files")
    return tok
