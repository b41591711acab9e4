"""What the labeling store hands out: prompts to label, sessions, tasks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class PromptItem:
    """A prompt and the completions to rank."""

    prompt_id: str
    """Unique id of the prompt (written to the exported records)."""

    prompt: str
    """The prompt text."""

    completions: tuple[str, ...]
    """The completions, in storage order (labelers see them shuffled)."""


@dataclass(frozen=True, kw_only=True)
class Session:
    """A logged-in browser: a labeler or the admin."""

    labeler_id: int | None
    """The labeler's row id; None for the admin."""

    name: str
    """The labeler's name, or ``"admin"``."""

    is_admin: bool
    """True for the admin session."""

    csrf: str
    """The CSRF token every form of this session must send back."""


@dataclass(frozen=True, kw_only=True)
class Task:
    """One prompt as one labeler sees it."""

    id: int
    """Task id (the assignment's row id)."""

    prompt_id: str
    """The prompt's id."""

    prompt: str
    """The prompt text."""

    completions: tuple[str, ...]
    """The completions in this labeler's display order."""

    status: str
    """``"open"``, ``"done"`` (answered; may be resubmitted) or ``"skipped"``."""

    answer: tuple[str, ...] | None
    """The labeler's stored answer in display order (``"1"``, ``"2"``, ``"F"``...), or None."""
