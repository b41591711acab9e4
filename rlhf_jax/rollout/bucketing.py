"""Left padding of token-id lists into a few bucket lengths, so that the jitted sampler compiles
once per bucket instead of once per batch."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class PromptBatch(NamedTuple):
    """Left-padded prompts (NumPy, host side)."""

    tokens: np.ndarray
    """``[B, P]`` int32 token ids, the pad id on the left."""
    mask: np.ndarray
    """``[B, P]`` int32, 1 for real tokens."""
    lengths: np.ndarray
    """``[B]`` int32, real prompt lengths."""
    indices: np.ndarray
    """``[B]`` positions of these prompts in the list they came from."""


def bucket_length(length: int, *, bucket: int | str = 16, max_length: int | None = None) -> int:
    """The padded length for a prompt of ``length`` tokens.

    ``bucket``: an int ``m`` rounds up to a multiple of ``m``; ``"pow2"`` to a power of two;
    ``1`` or ``None`` keeps the length. ``max_length`` caps the result (a prompt longer than it is
    an error).
    """
    if length < 1:
        raise ValueError("a prompt needs at least one token")
    if max_length is not None and length > max_length:
        raise ValueError(f"a prompt of {length} tokens is longer than max_length={max_length}")
    if bucket is None or bucket == 1:
        out = length
    elif bucket == "pow2":
        out = 1 << (length - 1).bit_length()
    elif isinstance(bucket, int) and bucket > 1:
        out = -(-length // bucket) * bucket
    else:
        raise ValueError(f"bucket must be an int >= 1, 'pow2' or None, got {bucket!r}")
    return out if max_length is None else min(out, max_length)


def left_pad(prompts: Sequence[Sequence[int]], *, pad_id: int, bucket: int | str = 16,
             length: int | None = None, max_length: int | None = None) -> PromptBatch:
    """Left-pad ``prompts`` into one ``[B, P]`` batch.

    ``P`` is ``length`` when given, else the bucket (see :func:`bucket_length`) of the longest
    prompt.
    """
    if len(prompts) == 0:
        raise ValueError("left_pad: no prompts")
    lengths = np.array([len(q) for q in prompts], np.int32)
    longest = int(lengths.max())
    if length is None:
        length = bucket_length(longest, bucket=bucket, max_length=max_length)
    elif longest > length:
        raise ValueError(f"left_pad: a prompt has {longest} tokens, more than length={length}")
    if lengths.min() < 1:
        raise ValueError(f"left_pad: prompts {np.nonzero(lengths < 1)[0].tolist()} are empty")
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for r, q in enumerate(prompts):
        if len(q):
            tokens[r, length - len(q):] = np.asarray(q, np.int32)
            mask[r, length - len(q):] = 1
    return PromptBatch(tokens, mask, lengths, np.arange(len(prompts)))


def bucket_prompts(prompts: Sequence[Sequence[int]], *, pad_id: int, bucket: int | str = 16,
                   max_length: int | None = None) -> dict[int, PromptBatch]:
    """Group prompts by bucket length: ``{P: PromptBatch}`` in increasing ``P``; each batch's
    ``indices`` point back into ``prompts``. ``{P: len(b.indices)}`` are the bucket sizes (see
    :func:`bucket_sizes`). Draw fixed-size minibatches from one bucket to compile once per bucket.
    """
    groups: dict[int, list[int]] = {}
    for i, q in enumerate(prompts):
        groups.setdefault(bucket_length(len(q), bucket=bucket, max_length=max_length), []).append(i)
    out = {}
    for p in sorted(groups):
        idx = groups[p]
        batch = left_pad([prompts[i] for i in idx], pad_id=pad_id, length=p)
        out[p] = batch._replace(indices=np.asarray(idx))
    return out


def bucket_sizes(buckets: dict[int, PromptBatch]) -> dict[int, int]:
    """``{bucket length: number of prompts}``."""
    return {p: int(b.tokens.shape[0]) for p, b in buckets.items()}
