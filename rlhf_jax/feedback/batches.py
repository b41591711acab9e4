"""Tokenised numpy batches for the reward trainer: single sequences, pairs and K-way rankings.

Each sequence is ``[bos] + prompt + completion [+ eos]``; prompt and completion are tokenised
separately without special tokens and concatenated, so the boundary between them is exact.

Policies (all counted in a `BatchReport`, with the indices of the kept items):

* **Padding.** ``padding_side="left"`` (default: the model takes left-padded batches, positions
  from the attention mask) or ``"right"``. Length ``T`` is ``max_length`` (static shapes for
  ``jit``) or, with ``pad_to_max_length=False``, the longest sequence of the batch.
* **Pad token.** A tokenizer without a pad token is an error (``ValueError``), unless
  ``pad_with_eos=True``, which pads with the eos id. That is safe here: the attention mask marks
  padding and the last-token index comes from the lengths, never from searching for the pad id.
* **Prompt too long.** ``overflow="truncate_left"`` drops prompt tokens from the left (after the
  bos, which is kept) until the sequence fits; the completion is kept whole. The prompts of one
  pair or ranking are cut to the same length, so all completions see the same context.
  ``overflow="skip"`` skips the item instead.
* **Completion too long.** When ``bos + completion (+ eos)`` alone exceeds ``max_length`` the item
  is skipped (whatever ``overflow`` says), never cut: a truncated completion is not the text the
  labelers judged, and the reward is read at its last token.
* **Empty sequence.** An item whose sequence has no token at all is skipped.
* **Conversational items.** Prompts or completions that are message lists are a ``ValueError``:
  they need the model's chat template, which these text encoders do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, NamedTuple, Sequence

import numpy as np
from jaxtyping import Bool, Float, Int

from rlhf_jax.config_checks import at_least, check, one_of
from rlhf_jax.feedback.records import PairRecord

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """How to tokenise, truncate and pad."""

    max_length: int
    """Context length T (tokens per sequence, padding included)."""

    padding_side: Literal["left", "right"] = "left"
    """Where padding goes. Left: the last real token is at T-1."""

    overflow: Literal["truncate_left", "skip"] = "truncate_left"
    """A prompt that does not fit: drop its leftmost tokens, or skip the item."""

    pad_to_max_length: bool = True
    """Pad every batch to ``max_length`` (static shape); else to the longest sequence."""

    add_bos: bool | None = None
    """Prepend the tokenizer's bos token; None: do what the tokenizer does by default."""

    append_eos: bool = False
    """Append the eos token to each completion (it then counts as part of the completion)."""

    pad_with_eos: bool = False
    """When the tokenizer has no pad token, pad with eos instead of raising."""

    def __post_init__(self):
        at_least(self, "max_length", 1, integer=True)
        one_of(self, "padding_side", ("left", "right"))
        one_of(self, "overflow", ("truncate_left", "skip"))
        for name in ("pad_to_max_length", "append_eos", "pad_with_eos"):
            check(self, name, isinstance(getattr(self, name), bool), "a boolean")
        check(self, "add_bos", self.add_bos is None or isinstance(self.add_bos, bool), "a boolean or None")


@dataclass(frozen=True, kw_only=True)
class BatchReport:
    """What went into a batch and what was left out."""

    items: int
    """Items (sequences, pairs or rankings) given."""

    kept_indices: tuple[int, ...]
    """Indices of the items in the batch, in batch order."""

    prompts_truncated: int = 0
    """Kept items whose prompt lost tokens on the left."""

    skipped_prompt_overflow: int = 0
    """Items skipped because the prompt did not fit (``overflow="skip"``)."""

    skipped_completion_too_long: int = 0
    """Items skipped because a completion alone did not fit."""

    skipped_empty: int = 0
    """Items skipped because a sequence had no token."""

    skipped_too_few_valid: int = 0
    """Rankings skipped because fewer than two completions are valid (unflagged)."""

    @property
    def kept(self) -> int:
        """Items in the batch."""
        return len(self.kept_indices)

    @property
    def skipped(self) -> int:
        """Items left out, all reasons together (``items == kept + skipped``)."""
        return self.items - self.kept


class SequenceBatch(NamedTuple):
    """Prompt + completion sequences."""

    input_ids: Int[np.ndarray, "B T"]
    """int32 token ids, pad id where ``attention_mask`` is 0."""
    attention_mask: Int[np.ndarray, "B T"]
    """int32, 1 on real tokens."""
    last_token_index: Int[np.ndarray, "B"]
    """int32 index of each row's last real token."""


class PairBatch(NamedTuple):
    """Preference pairs; axis 1 is (chosen, rejected). Reshape to ``[2B, T]`` for one pass."""

    input_ids: Int[np.ndarray, "B 2 T"]
    """int32 token ids; ``[:, 0]`` chosen, ``[:, 1]`` rejected."""
    attention_mask: Int[np.ndarray, "B 2 T"]
    """int32, 1 on real tokens."""
    last_token_index: Int[np.ndarray, "B 2"]
    """int32 index of the last real token."""
    margin: Float[np.ndarray, "B"]
    """float32 preference margin (0 where the pair has none)."""


class RankingBatch(NamedTuple):
    """K completions per prompt with their ranks (for the K-way ranking loss)."""

    input_ids: Int[np.ndarray, "B K T"]
    """int32 token ids; slots with ``valid`` False are all padding (attention_mask 0)."""
    attention_mask: Int[np.ndarray, "B K T"]
    """int32, 1 on real tokens."""
    last_token_index: Int[np.ndarray, "B K"]
    """int32 index of the last real token (meaningless where ``valid`` is False)."""
    ranks: Int[np.ndarray, "B K"]
    """int32 consensus rank, 1 = best, equal = tie; 0 where ``valid`` is False."""
    valid: Bool[np.ndarray, "B K"]
    """True for a real, unflagged completion."""


def pad_token_id(tokenizer: PreTrainedTokenizerBase, *, pad_with_eos: bool = False) -> int:
    """The id to pad with; raises ``ValueError`` when there is none (see module docstring)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if pad_with_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
        return int(tokenizer.eos_token_id)
    raise ValueError(
        f"tokenizer {type(tokenizer).__name__} has no pad token: set one "
        "(e.g. tokenizer.pad_token = tokenizer.eos_token) or pass BatchConfig(pad_with_eos=True)")


def _bos(tokenizer: PreTrainedTokenizerBase, config: BatchConfig) -> list[int]:
    bos = tokenizer.bos_token_id
    if bos is None or config.add_bos is False:
        return []
    if config.add_bos is None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if not probe or probe[0] != bos:
            return []
    return [int(bos)]


class _Encoder:
    """Tokenises items (one prompt, several completions) and lays them out in arrays."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: BatchConfig):
        self.tok, self.cfg = tokenizer, config
        self.pad = pad_token_id(tokenizer, pad_with_eos=config.pad_with_eos)
        self.bos = _bos(tokenizer, config)
        eos = tokenizer.eos_token_id
        if config.append_eos and eos is None:
            raise ValueError("append_eos=True but the tokenizer has no eos token")
        self.eos = [int(eos)] if config.append_eos else []
        self.counts = dict(prompts_truncated=0, skipped_prompt_overflow=0,
                           skipped_completion_too_long=0, skipped_empty=0,
                           skipped_too_few_valid=0)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return list(self.tok(texts, add_special_tokens=False)["input_ids"]) if texts else []

    def encode(self, prompts: list[str], completions: list[list[str | None]]
               ) -> tuple[list[int], list[list[list[int] | None]]]:
        """Per item, the sequences (None for an absent completion); returns kept indices too."""
        for i, (p, cs) in enumerate(zip(prompts, completions)):
            if not isinstance(p, str) or any(c is not None and not isinstance(c, str) for c in cs):
                raise ValueError(
                    f"item {i} is conversational (message lists): these encoders take text; render "
                    "prompt and completions with the tokenizer's chat template first")
        prompt_ids = self._ids(prompts)
        flat = [c for cs in completions for c in cs if c is not None]
        flat_ids = iter(self._ids(flat))
        comp_ids = [[None if c is None else next(flat_ids) + self.eos for c in cs]
                    for cs in completions]
        kept, seqs = [], []
        limit = self.cfg.max_length
        for idx, (p, cs) in enumerate(zip(prompt_ids, comp_ids)):
            present = [c for c in cs if c is not None]
            longest = max((len(c) for c in present), default=0)
            if len(self.bos) + longest > limit:
                self.counts["skipped_completion_too_long"] += 1
                continue
            room = limit - len(self.bos) - longest
            if len(p) > room:
                if self.cfg.overflow == "skip":
                    self.counts["skipped_prompt_overflow"] += 1
                    continue
                p = p[len(p) - room:]
                truncated = True
            else:
                truncated = False
            item = [None if c is None else self.bos + p + c for c in cs]
            if any(s is not None and not s for s in item):
                self.counts["skipped_empty"] += 1
                continue
            self.counts["prompts_truncated"] += truncated
            kept.append(idx)
            seqs.append(item)
        return kept, seqs

    def layout(self, seqs: list[list[int] | None]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[N, T]`` ids and mask and ``[N]`` last index; None rows are all padding."""
        longest = max((len(s) for s in seqs if s is not None), default=1)
        t = self.cfg.max_length if self.cfg.pad_to_max_length else longest
        ids = np.full((len(seqs), t), self.pad, dtype=np.int32)
        mask = np.zeros((len(seqs), t), dtype=np.int32)
        last = np.zeros((len(seqs),), dtype=np.int32)
        left = self.cfg.padding_side == "left"
        for row, s in enumerate(seqs):
            if s is None:
                last[row] = t - 1 if left else 0
                continue
            start = t - len(s) if left else 0
            ids[row, start:start + len(s)] = s
            mask[row, start:start + len(s)] = 1
            last[row] = start + len(s) - 1
        return ids, mask, last

    def report(self, items: int, kept: list[int]) -> BatchReport:
        return BatchReport(items=items, kept_indices=tuple(kept), **self.counts)


def encode_sequences(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     completions: Sequence[str], *, config: BatchConfig
                     ) -> tuple[SequenceBatch, BatchReport]:
    """Tokenise ``prompt[i] + completion[i]`` into a ``[B, T]`` batch (module docstring policies)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    enc = _Encoder(tokenizer, config)
    kept, seqs = enc.encode(list(prompts), [[c] for c in completions])
    ids, mask, last = enc.layout([s[0] for s in seqs])
    return SequenceBatch(ids, mask, last), enc.report(len(prompts), kept)


def _pair_row(pair: PairRecord | Mapping[str, Any]) -> Mapping[str, Any]:
    return pair.to_dict() if isinstance(pair, PairRecord) else pair


def encode_pairs(tokenizer: PreTrainedTokenizerBase,
                 pairs: Iterable[PairRecord | Mapping[str, Any]], *, config: BatchConfig
                 ) -> tuple[PairBatch, BatchReport]:
    """Tokenise preference pairs (`PairRecord` or rows with prompt/chosen/rejected[/margin],
    e.g. a pairs `datasets.Dataset`) into a ``[B, 2, T]`` batch, chosen first."""
    rows = [_pair_row(p) for p in pairs]
    enc = _Encoder(tokenizer, config)
    kept, seqs = enc.encode([r["prompt"] for r in rows],
                            [[r["chosen"], r["rejected"]] for r in rows])
    ids, mask, last = enc.layout([s for item in seqs for s in item])
    t = ids.shape[-1]
    margin = np.array([rows[i].get("margin") or 0.0 for i in kept], dtype=np.float32)
    batch = PairBatch(ids.reshape(-1, 2, t), mask.reshape(-1, 2, t), last.reshape(-1, 2), margin)
    return batch, enc.report(len(rows), kept)


def encode_rankings(tokenizer: PreTrainedTokenizerBase, items: Sequence[Any], *,
                    config: BatchConfig, num_completions: int | None = None
                    ) -> tuple[RankingBatch, BatchReport]:
    """Tokenise ranked prompts into a ``[B, K, T]`` batch with ranks and a validity mask.

    Args:
      items: objects with ``prompt``, ``completions`` and ``ranks`` (rank per completion,
        1 = best, None = flagged), e.g. `rlhf_jax.feedback.consensus.PromptConsensus`.
      num_completions: K; default the most completions of any item. Items with fewer are padded
        with invalid slots.

    Flagged completions are invalid slots (all padding) and do not count toward the length
    checks. An item with fewer than two valid completions gives no comparison and is skipped.
    """
    k = num_completions or max((len(it.completions) for it in items), default=1)
    enc = _Encoder(tokenizer, config)
    usable, prompts, comps = [], [], []
    for idx, it in enumerate(items):
        if len(it.completions) > k:
            raise ValueError(f"item {idx} has {len(it.completions)} completions, more than "
                             f"num_completions={k}")
        if sum(r is not None for r in it.ranks) < 2:
            enc.counts["skipped_too_few_valid"] += 1
            continue
        usable.append(idx)
        prompts.append(it.prompt)
        comps.append([c if r is not None else None for c, r in zip(it.completions, it.ranks)]
                     + [None] * (k - len(it.completions)))
    kept_local, seqs = enc.encode(prompts, comps)
    kept = [usable[i] for i in kept_local]
    ids, mask, last = enc.layout([s for item in seqs for s in item])
    t = ids.shape[-1]
    ranks = np.zeros((len(kept), k), dtype=np.int32)
    for row, i in enumerate(kept):
        for j, r in enumerate(items[i].ranks):
            ranks[row, j] = r or 0
    batch = RankingBatch(ids.reshape(-1, k, t), mask.reshape(-1, k, t), last.reshape(-1, k),
                         ranks, ranks > 0)
    return batch, enc.report(len(items), kept)
