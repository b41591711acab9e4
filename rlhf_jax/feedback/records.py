"""The three feedback formats as frozen records.

On disk each record is one JSON object per line (JSONL) or one row of a `datasets.Dataset`;
`rlhf_jax.feedback.validate` turns such an object into one of these records or a `FeedbackError`.

Ranked feedback (one record per prompt; the labelers rank its completions)::

    {"prompt_id": "p1", "prompt": "My house is too hot.",
     "completions": ["There is nothing you can do.", "Open the windows at night.", "Buy a dog."],
     "criterion": "helpfulness", "instructions_id": "rlhf-jax-default-v1",
     "labels": [{"labeler": "ann", "ranking": [2, 1, null], "flagged": [2]},
                {"labeler": "bob", "ranking": [2, 1, 3], "flagged": []}]}

``ranking[i]`` is the rank of completion ``i`` (1 = best; equal ranks are a tie), and a flagged
completion (nonsense or irrelevant: "F" in the instructions) has rank ``null``.

Binary feedback (one thumbs up or down per completion and labeler)::

    {"prompt_id": "p1", "prompt": "My house is too hot.",
     "completion": "Open the windows at night.", "labeler": "ann", "thumbs": "up"}

Pairwise records (preferred completion first)::

    {"prompt": "My house is too hot.", "chosen": " Open the windows.", "rejected": " Buy a dog.",
     "margin": 1.0}
    {"chosen": "Q: hot house? A: Open the windows.", "rejected": "Q: hot house? A: Buy a dog."}

The second pairwise form has no prompt: the common prefix of chosen and rejected is split off as
the prompt (see `rlhf_jax.feedback.validate.split_common_prefix`).

Conversational prompts (TRL's conversational format). In every kind, ``prompt`` may instead be a
list of messages ``{"role": "system" | "user" | "assistant", "content": "..."}`` ending with a
user message; completions stay strings (the assistant's reply)::

    {"prompt_id": "p1", "prompt": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "My house is too hot."}],
     "completions": ["Open the windows at night.", "Buy a dog."], ...}

Pairs of such a prompt follow TRL's conversational preference format: ``chosen`` and
``rejected`` are lists of assistant messages, ``[{"role": "assistant", "content": "..."}]``. A
pairwise record without ``prompt`` may give chosen and rejected as full conversations; their
shared leading messages become the prompt. Records hold messages as tuples of `Message`, so
they stay hashable; `to_dict` writes the list-of-objects form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, kw_only=True)
class Message:
    """One message of a conversational prompt (or an assistant reply in a conversational pair)."""

    role: Role
    """``"system"``, ``"user"`` or ``"assistant"``."""

    content: str
    """The message text (non-empty)."""

    def to_dict(self) -> dict[str, str]:
        """The JSON form: ``{"role": ..., "content": ...}``."""
        return {"role": self.role, "content": self.content}


Prompt = str | tuple[Message, ...]
"""A prompt: plain text, or a conversation of messages (TRL's conversational format)."""


def text_or_messages(value: Prompt) -> str | list[dict[str, str]]:
    """The JSON form of a prompt or completion: the string, or a list of message objects."""
    return value if isinstance(value, str) else [m.to_dict() for m in value]


def is_conversational(value: Prompt) -> bool:
    """True for a message tuple, False for text."""
    return not isinstance(value, str)


@dataclass(frozen=True, kw_only=True)
class Label:
    """One labeler's judgement of all completions of one prompt."""

    labeler: str
    """Labeler id, unique within a prompt."""

    ranking: tuple[int | None, ...]
    """``ranking[i]`` is the rank of completion ``i``: 1 = best, equal ranks = tie, None = flagged.
    Ranks lie in 1..n (n = number of completions); only their order matters."""

    flagged: tuple[int, ...]
    """Indices of the completions flagged as nonsense or irrelevant ("F"), sorted, no repeats."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this label."""
        return {"labeler": self.labeler, "ranking": list(self.ranking),
                "flagged": list(self.flagged)}


@dataclass(frozen=True, kw_only=True)
class RankedFeedback:
    """Several labelers' rankings of the completions of one prompt."""

    prompt_id: str
    """Unique id of the prompt within a file."""

    prompt: Prompt
    """The prompt text, as given to the model, or a conversation of messages."""

    completions: tuple[str, ...]
    """The model's completions of the prompt (at least one, none empty), in storage order."""

    criterion: str
    """The criterion the labelers ranked by, e.g. ``"helpfulness"`` or ``"harmlessness"``."""

    instructions_id: str
    """Which version of the written labeler instructions the labelers followed."""

    labels: tuple[Label, ...]
    """One label per labeler (at least one); labeler ids are unique."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this record (the exact on-disk shape)."""
        return {"prompt_id": self.prompt_id, "prompt": text_or_messages(self.prompt),
                "completions": list(self.completions), "criterion": self.criterion,
                "instructions_id": self.instructions_id,
                "labels": [label.to_dict() for label in self.labels]}


Thumbs = Literal["up", "down"]


@dataclass(frozen=True, kw_only=True)
class BinaryFeedback:
    """One labeler's thumbs up or down on one completion."""

    prompt: Prompt
    """The prompt text, or a conversation of messages."""

    completion: str
    """The completion that was judged (non-empty)."""

    labeler: str
    """Labeler id."""

    thumbs: Thumbs
    """``"up"`` (good) or ``"down"`` (bad)."""

    prompt_id: str | None = None
    """Optional prompt id; when absent, records are grouped by prompt text."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this record (``prompt_id`` only when set)."""
        out: dict[str, Any] = {"prompt": text_or_messages(self.prompt),
                               "completion": self.completion, "labeler": self.labeler,
                               "thumbs": self.thumbs}
        if self.prompt_id is not None:
            out["prompt_id"] = self.prompt_id
        return out


@dataclass(frozen=True, kw_only=True)
class PairRecord:
    """One preference pair, preferred completion first."""

    prompt: Prompt
    """The prompt (possibly split off as the common prefix of chosen and rejected), or a
    conversation of messages."""

    chosen: str | tuple[Message, ...]
    """The preferred completion (without the prompt): text, or assistant messages when the
    prompt is a conversation."""

    rejected: str | tuple[Message, ...]
    """The other completion, in the same form as ``chosen``."""

    margin: float | None = None
    """Optional preference strength, >= 0 (larger = clearer preference); None when unknown."""

    agreement: float | None = None
    """Optional fraction of labelers who preferred ``chosen``; None when unknown."""

    prompt_id: str | None = None
    """Optional prompt id."""

    def to_dict(self) -> dict[str, Any]:
        """The row form of this pair (every column present, None when unknown)."""
        return {"prompt_id": self.prompt_id, "prompt": text_or_messages(self.prompt),
                "chosen": text_or_messages(self.chosen),
                "rejected": text_or_messages(self.rejected), "agreement": self.agreement,
                "margin": self.margin}
