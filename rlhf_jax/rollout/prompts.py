"""Prompt texts -> one left-padded batch, the way every RL driver and the evaluation need it."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from rlhf_jax.rollout.bucketing import PromptBatch, left_pad


class EncodedPrompts(NamedTuple):
    batch: PromptBatch
    """All prompts, left padded to one bucket length ``P <= limit``."""
    truncated: int
    """Prompts longer than ``limit`` tokens: their last ``limit`` tokens were kept."""


def encode_prompts(tokenizer, prompts: Sequence[str], *, limit: int, pad_id: int, bucket: int | str = 16,
                   who: str = "prompts") -> EncodedPrompts:
    """Tokenise ``prompts`` (texts, already rendered with any chat template) and left pad them to
    one length (the longest rounded up to ``bucket``, at most ``limit``); a prompt longer than
    ``limit`` keeps its last ``limit`` tokens (counted). A prompt that tokenises to nothing, or a
    ``limit`` below 1, is an error naming the rows."""
    if limit < 1:
        raise ValueError(f"{who}: no room for a prompt (limit {limit} tokens): lower max_new_tokens or raise "
                         "the prompt length limit")
    if not prompts:
        raise ValueError(f"{who}: no prompts")
    ids = tokenizer(list(prompts))["input_ids"]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"{who}: prompts at rows {empty[:10]} tokenise to nothing; remove them or fix the text")
    truncated = sum(len(x) > limit for x in ids)
    return EncodedPrompts(left_pad([x[-limit:] for x in ids], pad_id=pad_id, bucket=bucket, max_length=limit),
                          truncated)
