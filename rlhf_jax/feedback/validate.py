"""Validation of one parsed JSON object into a feedback record.

Each ``parse_*`` function takes the decoded object and where it came from (``file``, ``line``)
and returns a record from `rlhf_jax.feedback.records` or raises `FeedbackError` naming the field
(a path such as ``labels[1].ranking[2]``). Keys not in the format are ignored.

Checks shared by every kind:

* Every string must be valid Unicode: a lone surrogate (``"\\ud800"``, e.g. half of an emoji
  cut by a truncating tool) is an error, since it cannot be written to Arrow or UTF-8 later.
* Completions (``completions[i]``, ``completion``, ``chosen``, ``rejected``) must not be empty
  or whitespace only: a reward is read at a completion's last token.
* A prompt is a string (may be empty) or a message list (see `rlhf_jax.feedback.records`):
  a non-empty list of ``{"role", "content"}`` objects with no other key, roles ``system``,
  ``user`` or ``assistant``, non-empty string contents, ``system`` only first, and the last
  message from the ``user``. The completions of a conversational pair are lists of assistant
  messages.
* ``margin`` is a finite number >= 0 (a negative margin would say rejected is better: swap
  the two instead); ``agreement`` a finite number in [0, 1].
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

from rlhf_jax.data.formats import split_shared_text
from rlhf_jax.feedback.errors import FeedbackError
from rlhf_jax.feedback.records import (ROLES, BinaryFeedback, Label, Message, PairRecord, Prompt,
                                       RankedFeedback)

KINDS = ("ranked", "binary", "pairwise")


class _Where:
    """Builds errors that carry the file and line of the record being checked."""

    def __init__(self, file: str | None, line: int | None):
        self.file, self.line = file, line

    def error(self, field: str | None, reason: str) -> FeedbackError:
        return FeedbackError(reason, file=self.file, line=self.line, field=field)

    def record(self, obj: Any) -> Mapping[str, Any]:
        if not isinstance(obj, Mapping):
            raise self.error(None, f"expected a JSON object, got {_type_name(obj)}")
        return obj

    def get(self, obj: Mapping[str, Any], key: str, path: str | None = None) -> Any:
        if key not in obj:
            raise self.error(path or key, "missing required field")
        return obj[key]

    def string(self, value: Any, path: str, *, nonempty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_type_name(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise self.error(path, f"holds a lone surrogate {value[e.start]!r} at character "
                                   f"{e.start}: not valid Unicode (a cut emoji or a broken "
                                   "\\u escape?)") from None
        if nonempty and not value.strip():
            raise self.error(path, "must not be empty or whitespace only")
        return value

    def completion(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        if not text.strip():
            raise self.error(path, "must not be empty or whitespace only (a reward is read at "
                                   "a completion's last token)")
        return text

    def messages(self, value: Any, path: str) -> tuple[Message, ...]:
        """A non-empty message list: objects with exactly a valid role and non-empty content."""
        raw = self.array(value, path)
        if not raw:
            raise self.error(path, "must hold at least one message")
        out = []
        for i, m in enumerate(raw):
            where = f"{path}[{i}]"
            if not isinstance(m, Mapping):
                raise self.error(where, 'expected a message {"role": ..., "content": ...}, got '
                                        f"{_type_name(m)}")
            for key in m:
                if key not in ("role", "content"):
                    raise self.error(f"{where}.{key}", "unknown key (a message has only 'role' "
                                                       "and 'content')")
            role = self.string(self.get(m, "role", f"{where}.role"), f"{where}.role")
            if role not in ROLES:
                raise self.error(f"{where}.role", f"must be one of {ROLES}, got {role!r}")
            content = self.string(self.get(m, "content", f"{where}.content"), f"{where}.content",
                                  nonempty=True)
            out.append(Message(role=role, content=content))  # type: ignore[arg-type]
        return tuple(out)

    def prompt(self, value: Any, path: str = "prompt") -> Prompt:
        """A prompt string, or a conversation that a completion answers (module docstring)."""
        if isinstance(value, str):
            return self.string(value, path)
        if isinstance(value, Mapping) or not hasattr(value, "__iter__"):
            raise self.error(path, f"expected a string or a message list, got {_type_name(value)}")
        msgs = self.messages(value, path)
        check_prompt_messages(self, msgs, path)
        return msgs

    def replies(self, value: Any, path: str) -> tuple[Message, ...]:
        """The completion of a conversational pair: assistant messages only."""
        if isinstance(value, str):
            raise self.error(path, "expected a list of assistant messages (the prompt is a "
                                   "message list), got string")
        msgs = self.messages(value, path)
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                raise self.error(f"{path}[{i}].role", f"must be 'assistant' in a completion, "
                                                      f"got {m.role!r}")
        return msgs

    def integer(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.error(path, f"expected an integer, got {_type_name(value)}")
        return int(value)

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.error(path, f"expected a number, got {_type_name(value)}")
        if not math.isfinite(float(value)):
            raise self.error(path, f"must be finite, got {value!r}")
        return float(value)

    def array(self, value: Any, path: str) -> list[Any]:
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise self.error(path, f"expected a list, got {_type_name(value)}")
        return list(value)


def check_prompt_messages(w: _Where, msgs: Sequence[Message], path: str) -> None:
    """``system`` only as the first message, and a ``user`` message last."""
    for i, m in enumerate(msgs):
        if m.role == "system" and i > 0:
            raise w.error(f"{path}[{i}].role", "a system message may only come first")
    if msgs[-1].role != "user":
        raise w.error(f"{path}[{len(msgs) - 1}].role",
                      f"a prompt must end with a user message (the completions answer it), "
                      f"got {msgs[-1].role!r}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


def parse_ranked(obj: Any, *, file: str | None = None, line: int | None = None) -> RankedFeedback:
    """Validate one ranked-feedback object.

    Checks: every field present with its type; ``prompt`` a string or a message list;
    ``completions`` non-empty and none empty; ``labels`` non-empty;
    labeler ids unique; each ``ranking`` has one entry per completion; ``flagged`` holds existing,
    distinct indices; a flagged completion has rank null and every other completion an integer
    rank in 1..n.

    Raises:
      FeedbackError: naming ``file``, ``line`` and the first offending field.
    """
    w = _Where(file, line)
    rec = w.record(obj)
    prompt_id = w.string(w.get(rec, "prompt_id"), "prompt_id", nonempty=True)
    prompt = w.prompt(w.get(rec, "prompt"))
    raw_completions = w.array(w.get(rec, "completions"), "completions")
    if not raw_completions:
        raise w.error("completions", "must hold at least one completion")
    completions = tuple(w.completion(c, f"completions[{i}]") for i, c in enumerate(raw_completions))
    criterion = w.string(w.get(rec, "criterion"), "criterion", nonempty=True)
    instructions_id = w.string(w.get(rec, "instructions_id"), "instructions_id", nonempty=True)
    raw_labels = w.array(w.get(rec, "labels"), "labels")
    if not raw_labels:
        raise w.error("labels", "must hold at least one label")
    n = len(completions)
    labels: list[Label] = []
    seen: dict[str, int] = {}
    for k, raw in enumerate(raw_labels):
        label = _parse_label(w, raw, f"labels[{k}]", n)
        if label.labeler in seen:
            raise w.error(f"labels[{k}].labeler",
                          f"duplicate labeler {label.labeler!r} on this prompt "
                          f"(also labels[{seen[label.labeler]}])")
        seen[label.labeler] = k
        labels.append(label)
    return RankedFeedback(prompt_id=prompt_id, prompt=prompt, completions=completions,
                          criterion=criterion, instructions_id=instructions_id,
                          labels=tuple(labels))


def _parse_label(w: _Where, raw: Any, path: str, n: int) -> Label:
    if not isinstance(raw, Mapping):
        raise w.error(path, f"expected an object, got {_type_name(raw)}")
    labeler = w.string(w.get(raw, "labeler", f"{path}.labeler"), f"{path}.labeler", nonempty=True)
    ranking = w.array(w.get(raw, "ranking", f"{path}.ranking"), f"{path}.ranking")
    if len(ranking) != n:
        raise w.error(f"{path}.ranking",
                      f"has {len(ranking)} entries but the record has {n} completions")
    flagged_raw = w.array(w.get(raw, "flagged", f"{path}.flagged"), f"{path}.flagged")
    flagged: set[int] = set()
    for j, f in enumerate(flagged_raw):
        idx = w.integer(f, f"{path}.flagged[{j}]")
        if not 0 <= idx < n:
            raise w.error(f"{path}.flagged[{j}]",
                          f"index {idx} does not exist (completions are 0..{n - 1})")
        if idx in flagged:
            raise w.error(f"{path}.flagged[{j}]", f"index {idx} is listed twice")
        flagged.add(idx)
    ranks: list[int | None] = []
    for i, r in enumerate(ranking):
        field = f"{path}.ranking[{i}]"
        if i in flagged:
            if r is not None:
                raise w.error(field, f"completion {i} is flagged but ranked {r!r} "
                                     "(a flagged completion must have rank null)")
            ranks.append(None)
            continue
        if r is None:
            raise w.error(field, f"completion {i} has rank null but is not flagged "
                                 f"(flag it in {path}.flagged or give it a rank)")
        rank = w.integer(r, field)
        if not 1 <= rank <= n:
            raise w.error(field, f"rank {rank} is out of range 1..{n}")
        ranks.append(rank)
    return Label(labeler=labeler, ranking=tuple(ranks), flagged=tuple(sorted(flagged)))


def parse_binary(obj: Any, *, file: str | None = None, line: int | None = None) -> BinaryFeedback:
    """Validate one binary (thumbs up/down) object.

    Raises:
      FeedbackError: naming ``file``, ``line`` and the first offending field.
    """
    w = _Where(file, line)
    rec = w.record(obj)
    prompt = w.prompt(w.get(rec, "prompt"))
    completion = w.completion(w.get(rec, "completion"), "completion")
    labeler = w.string(w.get(rec, "labeler"), "labeler", nonempty=True)
    thumbs = w.get(rec, "thumbs")
    if thumbs not in ("up", "down") or not isinstance(thumbs, str):
        raise w.error("thumbs", f"must be \"up\" or \"down\", got {thumbs!r}")
    prompt_id = rec.get("prompt_id")
    if prompt_id is not None:
        prompt_id = w.string(prompt_id, "prompt_id", nonempty=True)
    return BinaryFeedback(prompt=prompt, completion=completion, labeler=labeler, thumbs=thumbs,
                          prompt_id=prompt_id)


def parse_pairwise(obj: Any, *, file: str | None = None, line: int | None = None) -> PairRecord:
    """Validate one pairwise object.

    With a ``prompt`` field, ``chosen`` and ``rejected`` are the completions (strings, or lists
    of assistant messages when the prompt is a message list). Without one (the
    ``{"chosen", "rejected"}`` form) both hold the prompt as a shared prefix, which is split off
    by `split_common_prefix` (text) or `split_common_messages` (message lists). Optional:
    ``margin`` (finite, >= 0) and ``agreement`` (in [0, 1]), or null; ``prompt_id`` (string or
    null). ``chosen`` and ``rejected`` must differ and neither may be empty.

    Raises:
      FeedbackError: naming ``file``, ``line`` and the first offending field.
    """
    w = _Where(file, line)
    rec = w.record(obj)
    chosen_raw, rejected_raw = w.get(rec, "chosen"), w.get(rec, "rejected")
    chosen: str | tuple[Message, ...]
    rejected: str | tuple[Message, ...]
    if "prompt" in rec:
        prompt = w.prompt(rec["prompt"])
        if isinstance(prompt, str):
            chosen = w.completion(chosen_raw, "chosen")
            rejected = w.completion(rejected_raw, "rejected")
        else:
            chosen, rejected = w.replies(chosen_raw, "chosen"), w.replies(rejected_raw, "rejected")
    elif isinstance(chosen_raw, str):
        prompt, chosen, rejected = split_common_prefix(
            w.string(chosen_raw, "chosen"), w.string(rejected_raw, "rejected"))
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise w.error(key, "is empty once the shared prompt is split off")
    else:
        full_c, full_r = w.messages(chosen_raw, "chosen"), w.messages(rejected_raw, "rejected")
        if full_c == full_r:
            raise w.error("rejected", "is identical to chosen")
        prompt, chosen, rejected = split_common_messages(full_c, full_r)
        if not prompt:
            raise w.error("chosen", "chosen and rejected share no leading message, so there is no "
                                    "prompt (give a 'prompt' field)")
        check_prompt_messages(w, prompt, "chosen")
        n = len(prompt)
        for key, msgs in (("chosen", chosen), ("rejected", rejected)):
            if not msgs:
                raise w.error(key, "has no message after the shared prompt")
            for i, m in enumerate(msgs):
                if m.role != "assistant":
                    raise w.error(f"{key}[{n + i}].role", "must be 'assistant' after the shared "
                                                          f"prompt, got {m.role!r}")
    if chosen == rejected:
        raise w.error("rejected", "is identical to chosen")
    extra: dict[str, Any] = {}
    for key in ("margin", "agreement"):
        if rec.get(key) is not None:
            extra[key] = w.number(rec[key], key)
    if extra.get("margin", 0.0) < 0.0:
        raise w.error("margin", f"must be >= 0, got {extra['margin']} (a negative margin says "
                                "rejected is better: swap chosen and rejected)")
    if "agreement" in extra and not 0.0 <= extra["agreement"] <= 1.0:
        raise w.error("agreement", f"must lie in [0, 1], got {extra['agreement']}")
    if rec.get("prompt_id") is not None:
        extra["prompt_id"] = w.string(rec["prompt_id"], "prompt_id", nonempty=True)
    return PairRecord(prompt=prompt, chosen=chosen, rejected=rejected, **extra)


def split_common_messages(chosen: Sequence[Message], rejected: Sequence[Message]
                          ) -> tuple[tuple[Message, ...], tuple[Message, ...], tuple[Message, ...]]:
    """Split the shared leading messages off two conversations (as TRL's ``extract_prompt``):
    ``(prompt, chosen_rest, rejected_rest)``; the prompt is the longest common prefix of whole
    messages."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    return tuple(chosen[:n]), tuple(chosen[n:]), tuple(rejected[n:])


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split the shared prompt off two full texts: ``(prompt, chosen_rest, rejected_rest)``, by the
    rule of :func:`rlhf_jax.data.split_shared_text` (the longest common prefix cut back to just
    before its last whitespace, so each completion starts with that whitespace); two identical
    texts give an empty prompt (nothing sensible to split). Example::

        split_common_prefix("Q: hot? A: Sure.", "Q: hot? A: Sorry.")
        == ("Q: hot? A:", " Sure.", " Sorry.")
    """
    if chosen == rejected:
        return "", chosen, rejected
    return split_shared_text(chosen, rejected)


PARSERS = {"ranked": parse_ranked, "binary": parse_binary, "pairwise": parse_pairwise}


def detect_kind(obj: Any) -> str | None:
    """Guess the record kind from an object's keys: ranked, binary, pairwise, or None."""
    if not isinstance(obj, Mapping):
        return None
    if "labels" in obj or "completions" in obj:
        return "ranked"
    if "thumbs" in obj or "completion" in obj:
        return "binary"
    if "chosen" in obj or "rejected" in obj:
        return "pairwise"
    return None
