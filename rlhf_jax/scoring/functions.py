"""Verifiable rewards as plain Python functions ``fn(prompts, completions) -> floats``: exact match
against a reference answer, a regular expression, a length target, DAPO's overlong penalty, and a
Hugging Face sequence classifier. Each factory returns such a function (named, so that
:class:`rlhf_jax.scoring.WeightedScorer` logs it under its name); pass one to any RL driver, or
combine several with weights::

    reward = WeightedScorer([(FunctionScorer(exact_match(answers)), 1.0),
                             (FunctionScorer(length_target(40, tolerance=10)), 0.1)])

Completions arrive decoded without special tokens; prompts as the driver got them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Mapping, Sequence

TextFn = Callable[[Sequence[Any], Sequence[str]], list[float]]

__all__ = ["exact_match", "length_target", "normalize_answer", "overlong_penalty", "regex_match", "torch_classifier"]


def _named(fn, name: str) -> TextFn:
    fn.__name__ = fn.__qualname__ = name
    return fn


def _pairs(prompts: Sequence[Any], completions: Sequence[str], who: str):
    if len(prompts) != len(completions):
        raise ValueError(f"{who}: {len(prompts)} prompts but {len(completions)} completions")
    return zip(prompts, completions)


def normalize_answer(text: str, *, case: bool = False) -> str:
    """Unicode NFKC, whitespace runs collapsed to one space, stripped, trailing ``.`` dropped, and
    case-folded unless ``case``: ``"  Paris. "`` and ``"paris"`` compare equal."""
    text = " ".join(unicodedata.normalize("NFKC", str(text)).split()).rstrip(".").strip()
    return text if case else text.casefold()


def exact_match(answers: Mapping[Any, str] | Callable[[Any], str], *, pattern: str | None = None,
                case: bool = False, name: str = "exact_match") -> TextFn:
    """1.0 when the completion's answer equals the prompt's reference answer, else 0.0.

    Args:
      answers: ``{prompt: answer}`` (a prompt missing from it is an error naming it, never a
        silent 0) or ``answer_of(prompt) -> answer``.
      pattern: a regular expression that extracts the answer from the completion: its LAST
        match, group 1 when it has groups (e.g. ``r"answer: (\\S+)"``, ``r"\\\\boxed\\{(.*?)\\}"``);
        no match scores 0. ``None``: the whole completion is the answer.
      case: compare case-sensitively (both sides go through :func:`normalize_answer`).
      name: the reward's name in logs.
    """
    rx = re.compile(pattern) if pattern is not None else None
    lookup = answers if callable(answers) else None

    def answer_of(prompt):
        if lookup is not None:
            return lookup(prompt)
        try:
            return answers[prompt]
        except KeyError:
            raise KeyError(f"{name}: no reference answer for prompt {str(prompt)[:80]!r}; add it to the answers "
                           "mapping") from None
        except TypeError:  # an unhashable prompt (a message list)
            raise TypeError(f"{name}: prompts of type {type(prompt).__name__} cannot key a mapping; pass "
                            "answers as a function answer_of(prompt)") from None

    def score(prompts, completions):
        out = []
        for p, c in _pairs(prompts, completions, name):
            if rx is not None:
                found = list(rx.finditer(c))
                if not found:
                    out.append(0.0)
                    continue
                m = found[-1]
                c = m.group(1) if m.groups() else m.group(0)
            out.append(float(normalize_answer(c, case=case) == normalize_answer(answer_of(p), case=case)))
        return out

    return _named(score, name)


def regex_match(pattern: str, *, full: bool = False, flags: int = 0, reward: float = 1.0, name: str = "regex_match"
                ) -> TextFn:
    """``reward`` when ``pattern`` is found in the completion (``full``: matches all of it, after
    stripping surrounding whitespace), else 0.0. Use it for a required format, e.g.
    ``regex_match(r"^<think>.*</think>\\s*<answer>.*</answer>$", full=True, flags=re.S)``."""
    rx = re.compile(pattern, flags)

    def score(prompts, completions):
        hit = (lambda c: rx.fullmatch(c.strip())) if full else rx.search
        return [reward if hit(c) else 0.0 for _, c in _pairs(prompts, completions, name)]

    return _named(score, name)


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


def _check_unit(unit: str) -> None:
    if unit not in ("words", "chars"):
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")


def length_target(target: int, *, tolerance: int = 0, unit: str = "words", scale: float | None = None,
                  name: str = "length_target") -> TextFn:
    """``-max(0, |n - target| - tolerance) / scale`` with ``n`` the completion's length in words
    (whitespace separated) or characters and ``scale`` = ``target`` by default: 0 inside
    ``[target - tolerance, target + tolerance]``, falling linearly outside (-1 at a distance of
    one ``scale`` beyond the tolerance)."""
    _check_unit(unit)
    if target < 1 or tolerance < 0:
        raise ValueError(f"length_target: target must be >= 1 and tolerance >= 0, got {target}, {tolerance}")
    s = float(target if scale is None else scale)

    def score(prompts, completions):
        return [-max(0, abs(_length(c, unit) - target) - tolerance) / s for _, c in _pairs(prompts, completions, name)]

    return _named(score, name)


def overlong_penalty(max_length: int, *, buffer: int, unit: str = "words", name: str = "overlong_penalty") -> TextFn:
    """DAPO's soft overlong punishment (Yu et al. 2025): 0 up to ``max_length - buffer``, then
    ``(max_length - buffer - n) / buffer`` falling linearly to -1 at ``max_length``, and -1
    beyond."""
    _check_unit(unit)
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong_penalty: need 0 < buffer <= max_length, got buffer {buffer}, max {max_length}")
    free = max_length - buffer

    def score(prompts, completions):
        return [max(-1.0, min(0.0, (free - _length(c, unit)) / buffer)) for _, c in _pairs(prompts, completions, name)]

    return _named(score, name)


def torch_classifier(path: str, *, label: int | str = 0, prompt_in_input: bool = True, max_length: int = 512,
                     batch_size: int = 32, name: str | None = None) -> TextFn:
    """A Hugging Face ``*ForSequenceClassification`` folder of ANY architecture (BERT, DeBERTa...)
    as a reward, run by PyTorch on the CPU (for a Llama / Qwen2 / Mistral / GPT-2 classifier in JAX,
    sharing the policy's base when it can, see :mod:`rlhf_jax.scoring.hf_classifier`):
    the logit of ``label`` (an index or a name in ``config.id2label``) on ``prompt + completion``
    (or the completion alone with ``prompt_in_input=False``), truncated to ``max_length`` tokens
    from the left. A second network beside the policy's base: use it for rewards that are not an
    adapter on that base (a toxicity or sentiment classifier). Loaded once, here."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).float().eval()
    if isinstance(label, str):
        names = {v: int(k) for k, v in model.config.id2label.items()}
        if label not in names:
            raise ValueError(f"{path}: no label {label!r}; labels are {sorted(names)}")
        label = names[label]
    if not 0 <= int(label) < model.config.num_labels:
        raise ValueError(f"{path}: label index {label} is outside the model's {model.config.num_labels} labels")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.truncation_side = "left"
    who = name or f"classifier:{label}"

    def score(prompts, completions):
        texts = [(str(p) + c) if prompt_in_input else c for p, c in _pairs(prompts, completions, who)]
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length)
                out.extend(model(**enc).logits[:, int(label)].float().tolist())
        return out

    return _named(score, who)
