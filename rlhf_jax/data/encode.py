"""SFT examples from any language-modeling or prompt-completion dataset, standard or
conversational: token ids and a loss mask per example, then left-padded rows or packed rows.

What carries loss:

* standard ``text``: every token (+ EOS with ``append_eos``);
* conversational ``messages``: every assistant turn, as the template renders it (end-of-turn
  token included), nothing else (:func:`rlhf_jax.data.assistant_masks`);
* standard ``prompt`` + ``completion``: ``[bos] + prompt + completion (+ eos)``, the two tokenised
  apart (the boundary is exact), loss on the completion (+ EOS, appended with ``append_eos`` unless
  the completion already ends with it);
* conversational ``prompt`` + ``completion``: the template on ``prompt + completion``, loss on the
  completion's assistant turn(s).

The first token of an example never carries loss (nothing before it predicts it).

Too long for ``max_length`` (``overflow="truncate"``): prompt-completion examples lose prompt
tokens from the left (a leading BOS is kept) and are skipped when the completion alone does not
fit; language-modeling examples keep their first ``max_length`` tokens and are skipped when no loss
token is left. ``overflow="skip"`` skips every example that is too long. All counted in the
:class:`EncodeReport`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
from jaxtyping import Int

from rlhf_jax.data.dataset import (DataConfig, EncodeReport, Loaded, bos_ids, load_dataset, padding_id,
                                   text_ids)
from rlhf_jax.data.errors import DataError
from rlhf_jax.data.formats import Kind, Parts, row_parts
from rlhf_jax.data.masks import assistant_masks
from rlhf_jax.data.packing import PackedBatch, pack_examples

SFT_KINDS = (Kind.LANGUAGE_MODELING, Kind.PROMPT_COMPLETION)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTDataConfig:
    """How SFT examples are tokenised, cut and laid out."""

    max_length: int = 512
    """Tokens per row (padded rows and packed rows alike)."""
    append_eos: bool = True
    """Append the tokenizer's EOS to standard texts and completions that do not end with it
    (conversational completions end with the template's end-of-turn token instead)."""
    overflow: Literal["truncate", "skip"] = "truncate"
    """An example longer than ``max_length``: cut it (prompt from the left; a text or conversation
    at the end) or skip it. Counted either way."""
    packing: bool = False
    """Concatenate examples into rows of ``max_length`` with ``segment_ids`` (no attention across
    examples) instead of one left-padded example per row."""
    packing_strategy: Literal["best_fit", "sequential"] = "best_fit"
    """``best_fit``: longest first into the fullest row that fits (fewest rows); ``sequential``:
    in data order."""

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.overflow not in ("truncate", "skip"):
            raise ValueError(f"overflow must be 'truncate' or 'skip', got {self.overflow!r}")


class SFTExample(NamedTuple):
    """One tokenised example."""

    input_ids: list[int]
    """Token ids."""
    loss_mask: list[int]
    """1 on the tokens the loss scores."""


class SFTBatch(NamedTuple):
    """Tokenised SFT rows (host NumPy or device arrays; the one batch type of SFT, also
    ``rlhf_jax.train.SFTBatch``): ``loss_mask`` marks the tokens that are predicted (the
    completion, its EOS, the assistant turns). Packed rows also carry ``segment_ids`` and
    ``positions`` (several examples per row, see :class:`rlhf_jax.model.Transformer`)."""

    input_ids: Int[Any, "B T"]
    """int32 token ids, the pad id on padding."""
    attention_mask: Int[Any, "B T"]
    """int32, 1 on real tokens."""
    loss_mask: Int[Any, "B T"]
    """int32, 1 on the tokens the loss scores."""
    segment_ids: Int[Any, "B T"] | None = None
    """Packed rows: 1, 2, ... per example in the row, 0 on padding; ``None`` for padded rows."""
    positions: Int[Any, "B T"] | None = None
    """Packed rows: each token's position within its own example; ``None`` for padded rows."""


def _with_eos(tokenizer, ids: list[int], append_eos: bool) -> list[int]:
    if not append_eos:
        return ids
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("append_eos=True but the tokenizer has no EOS token: set tokenizer.eos_token or "
                        "append_eos=False")
    return ids if ids and ids[-1] == eos else ids + [int(eos)]


def sft_tokens(parts: Parts, loaded: Loaded, tokenizer, *, append_eos: bool, where: str
               ) -> tuple[list[int], list[int], int | None]:
    """``(input_ids, loss_mask, prompt_tokens)`` of one row; ``prompt_tokens`` is the length of the
    prompt part for prompt-completion rows (None for language modeling)."""
    fmt, template = loaded.format, loaded.template
    if fmt.kind is Kind.LANGUAGE_MODELING:
        if fmt.conversational:
            chat = assistant_masks(tokenizer, template, parts.sequence, where=where)
            return chat.input_ids, chat.loss_mask, None
        ids = _with_eos(tokenizer, bos_ids(tokenizer) + text_ids(tokenizer, parts.sequence), append_eos)
        return ids, [1] * len(ids), None
    if fmt.conversational:
        chat = assistant_masks(tokenizer, template, parts.prompt + parts.completion, first=len(parts.prompt),
                               where=where)
        return chat.input_ids, chat.loss_mask, chat.spans[0][0] if chat.spans else len(chat.input_ids)
    prompt = bos_ids(tokenizer) + text_ids(tokenizer, parts.prompt)
    completion = _with_eos(tokenizer, text_ids(tokenizer, parts.completion), append_eos)
    return prompt + completion, [0] * len(prompt) + [1] * len(completion), len(prompt)


def _fit(ids: list[int], mask: list[int], prompt_tokens: int | None, tokenizer, config: SFTDataConfig
         ) -> tuple[list[int], list[int], bool] | str:
    """The example cut to ``max_length`` and whether it was cut, or the reason it is skipped."""
    limit = config.max_length
    if len(ids) <= limit:
        return ids, mask, False
    if config.overflow == "skip":
        return "too_long"
    if prompt_tokens is None:
        return ids[:limit], mask[:limit], True
    keep = 1 if ids and ids[0] == getattr(tokenizer, "bos_token_id", None) and prompt_tokens > 0 else 0
    room = limit - keep - (len(ids) - prompt_tokens)
    if room < 0:
        return "completion_too_long"
    cut = slice(prompt_tokens - room, None)
    return ids[:keep] + ids[cut], mask[:keep] + mask[cut], True


def tokenize_sft(data: Any, tokenizer, *, config: SFTDataConfig = SFTDataConfig(),
                 data_config: DataConfig = DataConfig()) -> tuple[list[SFTExample], EncodeReport]:
    """Tokenise an SFT dataset (language modeling or prompt-completion, standard or conversational)
    into examples of at most ``max_length`` tokens (the module docstring says what carries loss
    and what is cut). ``data``: a path, a ``datasets.Dataset``/``DatasetDict``, or a list of rows."""
    loaded = load_dataset(data, tokenizer, config=data_config, kinds=SFT_KINDS, stage="SFT")
    rows = loaded.rows
    examples, kept = [], []
    skipped: dict[str, int] = {}
    truncated = 0
    for i, row in enumerate(rows):
        where = rows.where(i)
        parts = row_parts(row, loaded.format, where=where)
        ids, mask, prompt_tokens = sft_tokens(parts, loaded, tokenizer, append_eos=config.append_eos, where=where)
        fitted = _fit(ids, mask, prompt_tokens, tokenizer, config)
        if isinstance(fitted, str):
            skipped[fitted] = skipped.get(fitted, 0) + 1
            continue
        ids, mask, cut = fitted
        mask = [0] + list(mask[1:]) if mask else []
        if not any(mask):
            skipped["no_loss_tokens"] = skipped.get("no_loss_tokens", 0) + 1
            continue
        truncated += cut
        examples.append(SFTExample(ids, mask))
        kept.append(i)
    report = EncodeReport(source=rows.source, format=loaded.format.name, rows=len(rows), kept_indices=tuple(kept),
                          truncated=truncated, skipped=skipped)
    return examples, report


def pad_left(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int, length: int) -> SFTBatch:
    """``[N, length]`` left-padded rows of ``(input_ids, loss_mask)`` examples (each at most ``length``)."""
    n = len(examples)
    ids = np.full((n, length), pad_id, np.int32)
    attn = np.zeros((n, length), np.int32)
    loss = np.zeros((n, length), np.int32)
    for r, (x, m) in enumerate(examples):
        if len(x) > length:
            raise ValueError(f"example {r} has {len(x)} tokens, more than length={length}")
        if len(x):
            ids[r, length - len(x):] = x
            attn[r, length - len(x):] = 1
            loss[r, length - len(x):] = m
    return SFTBatch(ids, attn, loss)


def encode_sft_data(data: Any, tokenizer, *, config: SFTDataConfig = SFTDataConfig(),
                    data_config: DataConfig = DataConfig()) -> tuple[SFTBatch | PackedBatch, EncodeReport]:
    """SFT rows ready for a trainer: :class:`SFTBatch` (left padded, ``max_length`` wide), or with
    ``config.packing`` a :class:`rlhf_jax.data.PackedBatch` (``input_ids, segment_ids, positions,
    loss_mask``). The report counts what was truncated and skipped (and how rows were packed)."""
    examples, report = tokenize_sft(data, tokenizer, config=config, data_config=data_config)
    pad = padding_id(tokenizer)
    if not config.packing:
        return pad_left(examples, pad_id=pad, length=config.max_length), report
    packed, pack_report = pack_examples(examples, length=config.max_length, pad_id=pad,
                                        strategy=config.packing_strategy)
    if pack_report.skipped_no_loss or pack_report.truncated or pack_report.skipped_too_long:
        raise AssertionError(f"tokenize_sft produced examples the packer cut or dropped: {pack_report.summary()}")
    kept = report.kept_indices  # the packer numbers the examples it was given: back to dataset rows
    pack_report = dataclasses.replace(pack_report, rows_of=tuple(tuple(kept[j] for j in r)
                                                                 for r in pack_report.rows_of))
    return packed, dataclasses.replace(report, packing=pack_report)
