"""The labeler instructions template shipped with the package."""

from __future__ import annotations

import importlib.resources

LABELER_INSTRUCTIONS_ID = "rlhf-jax-default-v1"
"""The ``instructions_id`` to store in records labeled with the shipped template."""

_PLACEHOLDER = "{criterion}"


def labeler_instructions(criterion: str | None = "helpfulness") -> str:
    """The markdown labeler instructions, with the criterion filled in.

    Args:
      criterion: the criterion the labelers rank by (e.g. ``"helpfulness"``,
        ``"harmlessness"``); None returns the raw template with its ``{criterion}`` placeholders.
    """
    text = (importlib.resources.files("rlhf_jax.feedback")
            .joinpath("labeler_instructions.md").read_text(encoding="utf-8"))
    return text if criterion is None else text.replace(_PLACEHOLDER, criterion)
