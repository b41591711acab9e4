"""Builders for the own-model-and-data CLI tests (this module holds no tests): a tiny Qwen2 chat
folder (byte-level BPE, ChatML template) whose random weights end turns often, a
``Qwen2ForSequenceClassification`` made by `transformers` on its body, and the datasets of
:data:`tests.chat_fixtures.EXAMPLES` written in every source kind."""

from __future__ import annotations

import json
import os

from tests.chat_fixtures import EXAMPLES, chat_tokenizer, qwen2_folder, write_dataset

EOT_STRENGTH = 1.4
"""The ``<|im_end|>`` embedding's weight on a direction every token shares: p(<|im_end|>) is about
0.25 at each step of a random model (0 gives the 1 / vocabulary of a random model)."""


def chat_model_folder(path, *, strength: float = EOT_STRENGTH) -> str:
    """:func:`tests.chat_fixtures.qwen2_folder` whose embeddings give ``<|im_end|>`` a high
    probability at every position (every token carries 0.5 along one hidden direction, which
    survives the final RMSNorm; ``<|im_end|>`` carries ``strength`` there), so that sampled
    completions end their turn within a few tokens, as a chat model's do."""
    from safetensors.numpy import load_file, save_file

    tok = chat_tokenizer()
    path = qwen2_folder(path, tok)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    emb = tensors["model.embed_tokens.weight"].copy()
    emb[:, 1] = 0.5
    emb[tok.convert_tokens_to_ids("<|im_end|>"), 1] = strength
    tensors["model.embed_tokens.weight"] = emb
    save_file(tensors, file, metadata={"format": "pt"})
    return path


def classifier_folder(causal_folder, out, *, seed: int = 0) -> str:
    """A ``Qwen2ForSequenceClassification`` (one label) made by `transformers` on the body of
    ``causal_folder`` (the same weights) with a random score head, saved with the tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(causal_folder, num_labels=1).float().eval()
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(causal_folder).save_pretrained(out)
    return str(out)


SOURCES = {  # every format in some source kind, each kind at least twice
    "standard_language_modeling": "jsonl",
    "conversational_language_modeling": "json",
    "standard_prompt_completion": "parquet",
    "conversational_prompt_completion": "disk",
    "standard_preference": "jsonl",
    "conversational_preference": "parquet",
    "standard_implicit_preference": "disk",
    "conversational_implicit_preference": "json",
    "standard_prompt_only": "jsonl",
    "conversational_prompt_only": "disk",
}


def write_examples(root) -> dict[str, str]:
    """Each format of :data:`EXAMPLES` written as :data:`SOURCES` says (``disk`` as a DatasetDict
    with ``train`` and ``test`` splits, read with ``--split train``); returns the paths by format."""
    out = {}
    for name, kind in SOURCES.items():
        ext = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "disk": ""}[kind]
        path = os.path.join(os.fspath(root), name + ext)
        rows = EXAMPLES[name]
        write_dataset(rows, path, kind, splits={"train": rows, "test": rows[:1]} if kind == "disk" else None)
        out[name] = path
    return out


def write_reward_module(root) -> str:
    """``rewards.py`` with ``brevity(prompts, completions)`` (minus the completion's length in
    characters) and ``record`` (writes what it was given to ``calls.jsonl``, returns zeros)."""
    path = os.path.join(os.fspath(root), "rewards.py")
    with open(path, "w") as f:
        f.write("import json\n\n\ndef brevity(prompts, completions):\n"
                "    return [-len(c) / 10 for c in completions]\n\n\n"
                "def record(prompts, completions):\n"
                f"    with open({os.path.join(os.fspath(root), 'calls.jsonl')!r}, 'a') as f:\n"
                "        f.write(json.dumps({'prompts': prompts, 'completions': completions}) + '\\n')\n"
                "    return [0.0] * len(completions)\n")
    return path


def metrics(run_dir) -> list[dict]:
    """The rows of a run folder's ``metrics.jsonl``."""
    with open(os.path.join(os.fspath(run_dir), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
