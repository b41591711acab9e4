"""Rewards named on a command line: a reward folder (ours, or a Hugging Face sequence classifier,
told apart by their files) and Python functions ``module:function[:weight]``, combined into one
scorer.

- ``rlhf_jax`` reward folder (``reward_config.json`` + ``reward_model.safetensors``, written by
  ``rlhf-jax reward``): a :class:`ModelScorer` over the policy's base;
- Hugging Face ``*ForSequenceClassification`` folder (``config.json`` naming it): an
  :class:`HFClassifierScorer`, sharing the policy's base when its body is the same;
- ``module:function`` (a module importable from the working directory, or ``path/to/file.py``):
  ``function(prompts, completions) -> one float per completion``, the prompts as the data holds
  them (strings or message lists), the completions decoded without special tokens; an optional
  ``:weight`` (default 1).

Several parts make a :class:`WeightedScorer` (``sum_i w_i * part_i``, each part logged).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Sequence

from rlhf_jax.model import ModelConfig
from rlhf_jax.scoring.hf_classifier import (HFClassifierScorer, check_classifier_tokenizer, classifier_architecture,
                                            load_hf_classifier)
from rlhf_jax.scoring.io import CONFIG, load_reward_model
from rlhf_jax.scoring.scorers import FunctionScorer, ModelScorer, Scorer, WeightedScorer


def reward_folder_kind(path: str) -> str:
    """``"rlhf_jax"`` (our reward folder) or ``"hf_classifier"``; an error naming what each needs."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--reward {path}: no such folder (a reward folder written by `rlhf-jax reward`, "
                                f"holding {CONFIG}, or a Hugging Face *ForSequenceClassification folder)")
    if os.path.isfile(os.path.join(path, CONFIG)):
        return "rlhf_jax"
    if classifier_architecture(path) is not None:
        return "hf_classifier"
    raise ValueError(f"--reward {path}: neither a reward folder written by `rlhf-jax reward` (no {CONFIG}) nor a "
                     "Hugging Face sequence classifier (no config.json naming a *ForSequenceClassification)")


def load_reward_scorer(path: str, *, model_config: ModelConfig, base: Any, tokenizer, dtype: str = "float32",
                       name: str = "reward") -> ModelScorer:
    """The scorer of a reward folder (kind detected by :func:`reward_folder_kind`). ``base`` and
    ``model_config`` are the policy's: our reward models sit on them, a classifier shares them when
    its body is the same."""
    if reward_folder_kind(path) == "rlhf_jax":
        return ModelScorer(model_config, load_reward_model(path), name=name)
    classifier = load_hf_classifier(path, dtype=dtype, base=base, base_config=model_config)
    check_classifier_tokenizer(path, tokenizer, classifier)
    return HFClassifierScorer(classifier, name=name)


def load_function(spec: str) -> Callable:
    """The function named by ``module:function`` or ``path/to/file.py:function`` (the working
    directory is searched first for a module)."""
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr:
        raise ValueError(f"--reward_fn {spec!r}: expected module:function (or path/to/file.py:function)")
    try:
        if module.endswith(".py") or os.sep in module:
            if not os.path.isfile(module):
                raise FileNotFoundError(f"--reward_fn {spec!r}: no such file {module}")
            name = "reward_fn_" + os.path.splitext(os.path.basename(module))[0]
            loader = importlib.util.spec_from_file_location(name, module)
            mod = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(mod)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            mod = importlib.import_module(module)
    except (ImportError, SyntaxError) as e:
        raise ValueError(f"--reward_fn {spec!r}: cannot import {module} ({type(e).__name__}: {e}); run from the "
                         "folder holding the module, or give path/to/file.py:function") from e
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"--reward_fn {spec!r}: {module} has no function {attr!r}")
    return fn


def parse_reward_fn(spec: str) -> tuple[Callable, str, float]:
    """``module:function[:weight]`` -> ``(function, its name, weight)``."""
    head, sep, tail = spec.rpartition(":")
    weight = 1.0
    if sep and head.count(":") >= 1:
        try:
            weight = float(tail)
        except ValueError:
            raise ValueError(f"--reward_fn {spec!r}: the part after the last ':' must be a weight (a number), "
                             "as in module:function:0.5") from None
        spec = head
    fn = load_function(spec)
    return fn, spec.rpartition(":")[2], weight


def build_scorer(reward: str | None, reward_fns: Sequence[str] = (), *, model_config: ModelConfig, base: Any,
                 tokenizer, dtype: str = "float32", reward_weight: float = 1.0) -> Scorer:
    """One scorer from a reward folder and/or ``module:function[:weight]`` specs: the scorer
    itself when there is one part of weight 1, else their :class:`WeightedScorer`."""
    parts: list[tuple[Scorer, float]] = []
    if reward:
        parts.append((load_reward_scorer(reward, model_config=model_config, base=base, tokenizer=tokenizer,
                                         dtype=dtype), reward_weight))
    used = {s.name for s, _ in parts}
    for spec in reward_fns:
        fn, name, weight = parse_reward_fn(spec)
        unique, k = name, 2
        while unique in used:
            unique, k = f"{name}_{k}", k + 1
        used.add(unique)
        parts.append((FunctionScorer(fn, name=unique), weight))
    if not parts:
        raise ValueError("no reward: give --reward FOLDER (ours or a Hugging Face sequence classifier) and/or "
                         "--reward_fn module:function")
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return WeightedScorer(parts)
