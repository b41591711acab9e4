"""A Hugging Face ``*ForSequenceClassification`` folder (Llama, Qwen2, Mistral, GPT-2; one label) as
a reward model.

The folder's body becomes our transformer and its ``score.weight [1, D]`` our score head (with
``config.score_bias``, which :func:`rlhf_jax.export.save_hf_reward_model` writes, as the head's
bias). When the body's tensors and config equal the policy's base, the reward model is
``RewardModel(model=None, ...)``: a head on the shared base, no second copy held; otherwise it holds
its own full tree (and its own :class:`ModelConfig`).

Scores follow Hugging Face's reading rule: the score is taken at the rightmost token that is not
``pad_token_id`` (so a final token equal to the pad id, e.g. an EOS used as padding, is not the one
read), and positions are counted from the attention mask (what ``transformers`` computes on an
unpadded or right-padded row)::

    our score == AutoModelForSequenceClassification(...).logits[:, 0] + config.score_bias

Nothing is downloaded: the folder is local.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from rlhf_jax.model import ModelConfig, config_from_hf, params_from_tensors, score_head
from rlhf_jax.model.hf_io import CheckpointError, read_safetensors
from rlhf_jax.scoring.reward_model import RewardModel, hidden_states
from rlhf_jax.scoring.scorers import ModelScorer

SEQ_CLS = "ForSequenceClassification"
SCORE_BIAS_KEY = "score_bias"  # the field rlhf_jax.export.save_hf_reward_model writes
_IGNORED_FIELDS = ("dtype", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")


class HFClassifier(NamedTuple):
    """A sequence classifier loaded as a reward model."""

    model_config: ModelConfig
    """The config to score with: the policy's when the body is shared, else the classifier's."""
    reward_model: RewardModel
    """``model=None`` (the shared base) or the classifier's own full tree; its head."""
    pad_token_id: int | None
    """Hugging Face reads the score at the rightmost token that is not this id."""
    shared: bool
    """The body equals the policy's base (no second copy)."""
    source: str
    """The folder."""


def _hf_config(path: str) -> dict:
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"{path}: no config.json")
    with open(file) as f:
        return json.load(f)


def classifier_architecture(path: str) -> str | None:
    """The ``*ForSequenceClassification`` architecture named in ``path/config.json``, else None."""
    if not os.path.isfile(os.path.join(os.fspath(path), "config.json")):
        return None
    archs = _hf_config(path).get("architectures") or []
    return next((a for a in archs if a.endswith(SEQ_CLS)), None)


class _Body(Mapping):
    """The folder's tensors without the score head (the body :func:`params_from_tensors` reads)."""

    def __init__(self, tensors: Mapping):
        self.tensors = tensors
        self.keys_ = [k for k in tensors if not (k == "score.weight" or k.startswith("score."))]

    def __getitem__(self, key):
        return self.tensors[key]

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self):
        return len(self.keys_)


def _same_body(body_config: ModelConfig, body: Any, base_config: ModelConfig | None, base: Any) -> bool:
    """The classifier's body computes what the base computes: equal configs (token ids, dtype and
    tied embeddings aside) and equal tensors at every body path."""
    if base is None or base_config is None:
        return False
    fields = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in _IGNORED_FIELDS}
    if fields(body_config) != fields(base_config):
        return False
    flat_a = dict(jax.tree_util.tree_flatten_with_path(body)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(base)[0])
    for path, a in flat_a.items():
        b = flat_b.get(path)
        if b is None or np.shape(a) != np.shape(b) or not np.array_equal(np.asarray(a), np.asarray(b)):
            return False
    return True


def load_hf_classifier(path: str, *, dtype: str = "float32", base: Any = None,
                       base_config: ModelConfig | None = None) -> HFClassifier:
    """Load a local ``*ForSequenceClassification`` folder with one label as a reward model.

    Args:
      path: the folder (``config.json`` naming the architecture, safetensors with ``score.weight``).
      dtype: the body's parameter dtype.
      base, base_config: the policy's base; when the classifier's body equals it, the reward model
        shares it (``model=None``) and scores with ``base_config``.

    Raises:
      CheckpointError: not a sequence classifier, more than one label, no ``score.weight``, or a
        body the model layer cannot read (naming the tensors).
    """
    path = os.fspath(path)
    hf = _hf_config(path)
    arch = classifier_architecture(path)
    if arch is None:
        raise CheckpointError(f"{path}: config.json names architectures {hf.get('architectures')}, not a "
                              f"*{SEQ_CLS}; pass a reward folder written by `rlhf-jax reward`, or a Hugging Face "
                              "sequence-classification folder")
    labels = hf.get("num_labels", len(hf.get("id2label") or {0: None}))
    if labels != 1:
        raise CheckpointError(f"{path}: {arch} with {labels} labels; a reward model has one (num_labels=1)")
    config = config_from_hf(hf, dtype=dtype).replace(tie_word_embeddings=True)  # the body has no LM head
    tensors = read_safetensors(path)
    if "score.weight" not in tensors:
        raise CheckpointError(f"{path}: no score.weight tensor (the classifier's head)")
    weight = np.asarray(tensors["score.weight"], np.float32)
    if weight.shape != (1, config.hidden_size):
        raise CheckpointError(f"{path}: score.weight has shape {weight.shape}, expected (1, {config.hidden_size})")
    extra = [k for k in tensors if k.startswith("score.") and k != "score.weight"]
    bias = float(hf.get(SCORE_BIAS_KEY) or 0.0)
    if "score.bias" in extra:
        bias += float(np.asarray(tensors["score.bias"], np.float32).reshape(()))
        extra.remove("score.bias")
    if extra:
        raise CheckpointError(f"{path}: unexpected score tensors {extra}")
    body = params_from_tensors(_Body(tensors), config, source=path)
    head = {"kernel": jnp.asarray(weight[0]), "bias": jnp.float32(bias)}
    pad = hf.get("pad_token_id")
    if _same_body(config, body, base_config, base):
        return HFClassifier(base_config, RewardModel(None, head, 1.0, 0.0), pad, True, path)
    return HFClassifier(config, RewardModel(body, head, 1.0, 0.0), pad, False, path)


def check_classifier_tokenizer(path: str, tokenizer, classifier: HFClassifier) -> None:
    """Raise unless the classifier reads the policy's token ids: the same vocabulary when the folder
    has tokenizer files, else the same vocabulary size (the reward scores the generated ids)."""
    from rlhf_jax.model.hf_io import TOKENIZER_FILES, load_tokenizer

    size = classifier.model_config.vocab_size
    if any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        theirs = load_tokenizer(path)
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{path}: the classifier's tokenizer differs from the policy's; it scores the "
                             "policy's token ids, so it needs the same vocabulary (wrap another tokenizer's "
                             "classifier in a --reward_fn that re-tokenises the texts)")
    elif size < len(tokenizer):
        raise ValueError(f"{path}: the classifier's vocabulary ({size}) is smaller than the policy tokenizer's "
                         f"({len(tokenizer)}); it cannot read the policy's token ids")


def hf_classifier_scores(model_config: ModelConfig, rm: RewardModel, base: Any, tokens: Int[Array, "B T"],
                         attention_mask: Int[Array, "B T"], *, pad_token_id: int | None) -> Float[Array, "B"]:
    """``gain * (h . w + b) + bias`` read at each row's rightmost real token that is not
    ``pad_token_id`` (Hugging Face's rule); hidden states over every real token."""
    hidden = hidden_states(model_config, rm.model, base, tokens, attention_mask)
    read = attention_mask if pad_token_id is None else attention_mask * (tokens != pad_token_id)
    return rm.gain * score_head(rm.head, hidden, read) + rm.bias


class HFClassifierScorer(ModelScorer):
    """A :class:`ModelScorer` for a Hugging Face classifier (its reading rule; see the module
    docstring). ``reward_model`` and ``model_config`` are the classifier's, so PPO's
    ``critic_init="reward"`` starts the critic from it as from any reward model."""

    def __init__(self, classifier: HFClassifier, *, name: str = "reward"):
        super().__init__(classifier.model_config, classifier.reward_model, name=name)
        mc, pad = classifier.model_config, classifier.pad_token_id
        self.classifier = classifier
        self._score = jax.jit(lambda rm, base, tokens, mask: hf_classifier_scores(mc, rm, base, tokens, mask,
                                                                                  pad_token_id=pad))
