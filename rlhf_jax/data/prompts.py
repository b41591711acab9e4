"""Prompts for generation (RL, evaluation) and preference pairs, from standard or conversational
rows.

Prompts come from prompt-only, prompt-completion and preference rows (an implicit preference's
prompt is the shared part of chosen and rejected). A standard prompt is tokenised as is (with the
tokenizer's BOS when it adds one); a conversational prompt is rendered with the generation prompt,
so generation starts the assistant's turn.

Preference pairs keep the texts (``prompt``, ``chosen``, ``rejected``: the rows that
:func:`rlhf_jax.feedback.encode_pairs` takes) and their token ids. A conversational completion is
exactly what the template renders for the assistant turn after the generation prompt (its
end-of-turn token included), checked to tokenise the same alone and after the prompt.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from rlhf_jax.data.chat import render_prompt
from rlhf_jax.data.dataset import DataConfig, EncodeReport, Loaded, bos_ids, load_dataset, text_ids
from rlhf_jax.data.errors import DataError
from rlhf_jax.data.formats import Kind, row_parts
from rlhf_jax.data.masks import assistant_masks

PROMPT_KINDS = (Kind.PROMPT_ONLY, Kind.PROMPT_COMPLETION, Kind.PREFERENCE, Kind.IMPLICIT_PREFERENCE)
PREFERENCE_KINDS = (Kind.PREFERENCE, Kind.IMPLICIT_PREFERENCE)


class Prompts(NamedTuple):
    """Prompts ready for the sampler, and as text for Python reward functions."""

    input_ids: list[list[int]]
    """Token ids of each prompt (conversational: rendered with the generation prompt)."""
    texts: list[str]
    """The text the ids were made from (the rendered template for conversational prompts)."""
    prompts: list[Any]
    """The prompt as the data holds it: a string, or a message list."""


def prompt_tokens(prompt: Any, loaded: Loaded, tokenizer, *, where: str) -> tuple[str, list[int]]:
    """``(text, ids)`` of one prompt (standard: BOS + text; conversational: the template with the
    generation prompt, no special tokens added)."""
    if loaded.format.conversational:
        text = render_prompt(tokenizer, loaded.template, prompt, where=where)
        return text, text_ids(tokenizer, text)
    return prompt, bos_ids(tokenizer) + text_ids(tokenizer, prompt)


def encode_prompt_data(data: Any, tokenizer, *, data_config: DataConfig = DataConfig(), max_length: int | None = None,
                       overflow: Literal["truncate_left", "skip"] = "truncate_left") -> tuple[Prompts, EncodeReport]:
    """Prompts of a prompt-only, prompt-completion or preference dataset.

    Args:
      data: a path, a ``datasets.Dataset``/``DatasetDict``, or a list of rows.
      max_length: longest prompt in tokens (None: no limit). A longer prompt loses tokens from
        the left (a leading BOS is kept; counted as truncated) or, with ``overflow="skip"``, is
        skipped (counted).
    """
    if overflow not in ("truncate_left", "skip"):
        raise ValueError(f"overflow must be 'truncate_left' or 'skip', got {overflow!r}")
    loaded = load_dataset(data, tokenizer, config=data_config, kinds=PROMPT_KINDS, stage="generation (prompts)")
    rows = loaded.rows
    out = Prompts([], [], [])
    kept, skipped, truncated = [], {}, 0
    for i, row in enumerate(rows):
        where = rows.where(i)
        prompt = row_parts(row, loaded.format, where=where).prompt
        text, ids = prompt_tokens(prompt, loaded, tokenizer, where=where)
        if not ids:
            skipped["empty"] = skipped.get("empty", 0) + 1
            continue
        if max_length is not None and len(ids) > max_length:
            if overflow == "skip":
                skipped["too_long"] = skipped.get("too_long", 0) + 1
                continue
            keep = 1 if ids[0] == getattr(tokenizer, "bos_token_id", None) else 0
            ids = ids[:keep] + ids[len(ids) - (max_length - keep):]
            truncated += 1
        out.input_ids.append(ids)
        out.texts.append(text)
        out.prompts.append(prompt)
        kept.append(i)
    report = EncodeReport(source=rows.source, format=loaded.format.name, rows=len(rows), kept_indices=tuple(kept),
                          truncated=truncated, skipped=skipped)
    return out, report


def _conversational_pair(parts, loaded: Loaded, tokenizer, where: str) -> dict:
    """Texts and ids of a conversational pair: one rendering of prompt + completion per side, the
    prompt part being the prompt's rendering with the generation prompt (the same for both)."""
    out: dict = {}
    for side in ("chosen", "rejected"):
        chat = assistant_masks(tokenizer, loaded.template, parts.prompt + getattr(parts, side),
                               first=len(parts.prompt), where=where)
        head = render_prompt(tokenizer, loaded.template, parts.prompt, where=where)
        n = len(text_ids(tokenizer, head))  # assistant_masks checked these are the first tokens of chat
        if not chat.spans or chat.spans[0][0] != n:
            raise DataError(f"{where}: {side} has no assistant turn right after the prompt")
        out.update({"prompt": head, "prompt_ids": chat.input_ids[:n], side: chat.text[len(head):],
                    f"{side}_ids": chat.input_ids[n:]})
    return out


def encode_preference_data(data: Any, tokenizer, *, data_config: DataConfig = DataConfig()
                           ) -> tuple[list[dict], EncodeReport]:
    """Preference pairs, explicit or implicit, standard or conversational.

    Returns one dict per row: ``prompt``, ``chosen``, ``rejected`` (texts; conversational:
    rendered, the prompt with the generation prompt and each completion as the template renders
    the assistant turn) and ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (``prompt_ids +
    chosen_ids`` is the whole sequence; standard prompts start with the tokenizer's BOS when it
    adds one), plus ``margin`` when the row has a number there. Nothing is cut here (the pair
    encoder applies ``max_length``), so every row is kept.

    Conversational texts already hold the template's special tokens (its BOS included): give
    them to :func:`rlhf_jax.feedback.encode_pairs` with ``BatchConfig(add_bos=False)``, or use the ids.
    """
    loaded = load_dataset(data, tokenizer, config=data_config, kinds=PREFERENCE_KINDS, stage="preference training")
    rows = loaded.rows
    pairs = []
    for i, row in enumerate(rows):
        where = rows.where(i)
        parts = row_parts(row, loaded.format, where=where)
        if loaded.format.conversational:
            pair = _conversational_pair(parts, loaded, tokenizer, where)
        else:
            pair = {"prompt": parts.prompt, "chosen": parts.chosen, "rejected": parts.rejected,
                    "prompt_ids": bos_ids(tokenizer) + text_ids(tokenizer, parts.prompt),
                    "chosen_ids": text_ids(tokenizer, parts.chosen),
                    "rejected_ids": text_ids(tokenizer, parts.rejected)}
        margin = row.get("margin")
        if isinstance(margin, (int, float)) and not isinstance(margin, bool):
            pair["margin"] = float(margin)
        pairs.append(pair)
    report = EncodeReport(source=rows.source, format=loaded.format.name, rows=len(rows),
                          kept_indices=tuple(range(len(rows))))
    return pairs, report
