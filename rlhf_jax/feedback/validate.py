"""Validation of one parsed JSON object into a feedback record.

Each ``parse_*`` function takes the decoded object and where it came from (``file``, ``line``)
and returns a record from `rlhf_jax.feedback.records` or raises `FeedbackError` naming the field
(a path such as ``labels[1].ranking[2]``). Keys not in the format are ignored.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from rlhf_jax.feedback.errors import FeedbackError
from rlhf_jax.feedback.records import BinaryFeedback, Label, PairRecord, RankedFeedback

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
        if nonempty and not value.strip():
            raise self.error(path, "must not be empty")
        return value

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


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


def parse_ranked(obj: Any, *, file: str | None = None, line: int | None = None) -> RankedFeedback:
    """Validate one ranked-feedback object.

    Checks: every field present with its type; ``completions`` non-empty; ``labels`` non-empty;
    labeler ids unique; each ``ranking`` has one entry per completion; ``flagged`` holds existing,
    distinct indices; a flagged completion has rank null and every other completion an integer
    rank in 1..n.

    Raises:
      FeedbackError: naming ``file``, ``line`` and the first offending field.
    """
    w = _Where(file, line)
    rec = w.record(obj)
    prompt_id = w.string(w.get(rec, "prompt_id"), "prompt_id", nonempty=True)
    prompt = w.string(w.get(rec, "prompt"), "prompt")
    raw_completions = w.array(w.get(rec, "completions"), "completions")
    if not raw_completions:
        raise w.error("completions", "must hold at least one completion")
    completions = tuple(w.string(c, f"completions[{i}]") for i, c in enumerate(raw_completions))
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
    prompt = w.string(w.get(rec, "prompt"), "prompt")
    completion = w.string(w.get(rec, "completion"), "completion")
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

    With a ``prompt`` field, ``chosen`` and ``rejected`` are the completions. Without one (the
    ``{"chosen", "rejected"}`` form) both hold the prompt as a shared prefix, which is split off
    by `split_common_prefix`. Optional: ``margin`` and ``agreement`` (finite numbers, or null),
    ``prompt_id`` (string or null). ``chosen`` and ``rejected`` must differ.

    Raises:
      FeedbackError: naming ``file``, ``line`` and the first offending field.
    """
    w = _Where(file, line)
    rec = w.record(obj)
    chosen = w.string(w.get(rec, "chosen"), "chosen")
    rejected = w.string(w.get(rec, "rejected"), "rejected")
    if "prompt" in rec:
        prompt = w.string(rec["prompt"], "prompt")
    else:
        prompt, chosen, rejected = split_common_prefix(chosen, rejected)
    if chosen == rejected:
        raise w.error("rejected", "is identical to chosen")
    extra: dict[str, Any] = {}
    for key in ("margin", "agreement"):
        if rec.get(key) is not None:
            extra[key] = w.number(rec[key], key)
    if "agreement" in extra and not 0.0 <= extra["agreement"] <= 1.0:
        raise w.error("agreement", f"must lie in [0, 1], got {extra['agreement']}")
    if rec.get("prompt_id") is not None:
        extra["prompt_id"] = w.string(rec["prompt_id"], "prompt_id", nonempty=True)
    return PairRecord(prompt=prompt, chosen=chosen, rejected=rejected, **extra)


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split the shared prompt off two full texts: ``(prompt, chosen_rest, rejected_rest)``.

    The prompt is the longest common prefix, cut back to just before its last whitespace
    character, so that a word both completions happen to start with ("S" in "Sure"/"Sorry")
    stays in the completions, and each completion starts with the whitespace that separated it
    from the prompt (what BPE tokenizers expect: ``" Sure"``). With no whitespace in the common
    prefix the prompt is empty. Example::

        split_common_prefix("Q: hot? A: Sure.", "Q: hot? A: Sorry.")
        == ("Q: hot? A:", " Sure.", " Sorry.")
    """
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if n == len(chosen) == len(rejected):
        return "", chosen, rejected  # identical texts: nothing sensible to split
    cut = n
    while cut > 0 and not chosen[cut - 1].isspace():
        cut -= 1
    # cut now follows the last whitespace of the prefix; keep that whitespace (and any run of
    # whitespace before it) with the completions.
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


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
