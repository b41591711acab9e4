"""The errors of the data layer: each names the source, the row and what to change."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset row or source that cannot be used; the message names the file, the row and the fix."""


class ChatTemplateError(DataError):
    """Conversational data that the chat template cannot render, or whose assistant turns cannot be
    found in the rendering; the message names the row, the template and the fix."""
