"""Where the completions to label come from: a completions JSONL file, or a model folder that
samples K completions per prompt of a prompts file (through the public sampling API)."""

from __future__ import annotations

import os
from typing import Any, Iterator

from rlhf_jax.label.ranking import LabelError
from rlhf_jax.label.records import PromptItem


def _rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    from rlhf_jax.data.errors import DataError
    from rlhf_jax.data.sources import read_jsonl

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LabelError(f"{path}: no such file")
    try:
        rows = read_jsonl(path)
    except DataError as e:
        raise LabelError(str(e)) from e
    yield from zip(rows.lines, rows.rows)


def _prompt_id(path, line: int, obj: dict, seen: dict[str, int]) -> str:
    pid = obj.get("prompt_id", f"p{line}")
    if not isinstance(pid, str) or not pid.strip():
        raise LabelError(f"{path}:{line}: field 'prompt_id': expected a non-empty string")
    if pid in seen:
        raise LabelError(f"{path}:{line}: field 'prompt_id': {pid!r} already used on line "
                         f"{seen[pid]}; make the ids unique")
    seen[pid] = line
    return pid


def read_prompts(path: str | os.PathLike, *, field: str = "prompt") -> list[tuple[str, str]]:
    """``(prompt_id, prompt)`` per line of a JSONL file with a string field ``field`` (and an
    optional ``prompt_id``; default ``p<line>``)."""
    out, seen = [], {}
    for line, obj in _rows(path):
        if not isinstance(obj.get(field), str):
            raise LabelError(f"{path}:{line}: field {field!r}: missing or not a string")
        out.append((_prompt_id(path, line, obj, seen), obj[field]))
    if not out:
        raise LabelError(f"{path}: no prompts")
    return out


def read_completions(path: str | os.PathLike) -> list[PromptItem]:
    """Prompts with their completions from JSONL: ``{"prompt_id"?, "prompt", "completions":
    [at least 2 strings]}`` per line (a ranked-feedback file works too; its labels are
    ignored)."""
    out, seen = [], {}
    for line, obj in _rows(path):
        pid = _prompt_id(path, line, obj, seen)
        if not isinstance(obj.get("prompt"), str):
            raise LabelError(f"{path}:{line}: field 'prompt': missing or not a string")
        comps = obj.get("completions")
        if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
            raise LabelError(f"{path}:{line}: field 'completions': expected a list of strings")
        if len(comps) < 2:
            raise LabelError(f"{path}:{line}: field 'completions': {len(comps)} completion(s); "
                             "ranking needs at least 2")
        out.append(PromptItem(prompt_id=pid, prompt=obj["prompt"], completions=tuple(comps)))
    if not out:
        raise LabelError(f"{path}: no records")
    return out


def sample_completions(model_dir: str, prompts: list[tuple[str, str]], *, k: int,
                       sampling, seed: int = 0, batch_size: int = 32,
                       dtype: str = "float32") -> list[PromptItem]:
    """K completions per prompt sampled by the model in ``model_dir`` (a local Hugging Face
    folder with its tokenizer), special tokens (EOS) removed from the texts.

    Args:
      sampling: a `rlhf_jax.rollout.SamplingConfig`.
    """
    if k < 2:
        raise LabelError(f"k must be >= 2 completions per prompt to rank, got {k}")
    from rlhf_jax.model import Transformer, load_pretrained
    from rlhf_jax.rollout import Sampler, sample_texts

    config, params, tokenizer = load_pretrained(model_dir, dtype=dtype)
    sampler = Sampler(Transformer(config), sampling)
    try:
        texts = sample_texts(sampler, {"params": params}, tokenizer, [p for _, p in prompts],
                             n_samples=k, batch_size=batch_size, seed=seed,
                             skip_special_tokens=True)
    except ValueError as e:  # e.g. prompt + max_new_tokens longer than the model's positions
        raise LabelError(f"{model_dir}: cannot sample: {e}") from e
    return [PromptItem(prompt_id=pid, prompt=p, completions=tuple(t))
            for (pid, p), t in zip(prompts, texts)]
