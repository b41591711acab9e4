"""Host-side batching shared by the algorithms: the data order as a function of the step (so a
resumed run sees the same batches) and cutting columns that are padding in every row."""

from __future__ import annotations

import numpy as np


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of step ``step``: epoch ``e = step // (n // batch_size)`` visits the permutation
    drawn from ``(seed, e)``; a function of the step alone, so resuming restores the data order."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} rows)")
    epoch, i = divmod(int(step), per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size]


def trim_padding(batch, *, multiple: int, mask_key: str = "attention_mask"):
    """Cut the sequence columns (last axis) that are padding in EVERY row of a host batch, keeping
    the width a multiple of ``multiple`` (at most the original width) so that a run compiles a
    few shapes, not one per batch. Positions come from the mask, so the model's outputs on the
    real tokens do not change. ``batch``: a dict or NamedTuple of NumPy arrays; those shaped like
    the mask are cut, others (per-row margins, ranks) pass through; ``multiple=0`` returns it
    unchanged."""
    if not multiple:
        return batch
    items = batch._asdict() if hasattr(batch, "_asdict") else dict(batch)
    mask = np.asarray(items[mask_key])
    t = mask.shape[-1]
    used = np.nonzero(mask.reshape(-1, t).any(axis=0))[0]
    if used.size == 0:
        return batch
    lo, hi = int(used[0]), int(used[-1]) + 1
    width = min(t, -(-(hi - lo) // multiple) * multiple)
    if hi == t:  # left padded (or full): keep the last ``width`` columns
        lo = t - width
    else:
        lo = min(lo, t - width)
    cut = {k: np.asarray(v)[..., lo:lo + width] if np.shape(v) == mask.shape else v for k, v in items.items()}
    return type(batch)(**cut) if hasattr(batch, "_asdict") else cut


def check_context(model_config, *, who: str, max_length: int | None = None, prompt_length: int | None = None,
                  new_tokens: int | None = None) -> None:
    """Raise when a length does not fit the model's context (``max_position_embeddings``), naming
    both numbers: a training ``max_length``, or a prompt length plus ``max_new_tokens``."""
    ctx = model_config.max_position_embeddings
    if max_length is not None and max_length > ctx:
        raise ValueError(f"{who}: max_length {max_length} is beyond the model's context of {ctx} tokens "
                         f"(max_position_embeddings); use --max_length {ctx} or less")
    if new_tokens is not None and new_tokens >= ctx:
        raise ValueError(f"{who}: max_new_tokens {new_tokens} leaves no room for a prompt in the model's context "
                         f"of {ctx} tokens; lower --sampling.max_new_tokens")
    if prompt_length is not None and new_tokens is not None and prompt_length + new_tokens > ctx:
        raise ValueError(f"{who}: max_prompt_length {prompt_length} + max_new_tokens {new_tokens} = "
                         f"{prompt_length + new_tokens} is beyond the model's context of {ctx} tokens")
