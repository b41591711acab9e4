"""Host (NumPy) layout of grouped batches: one prompt, several completions, for the forward pass
that computes each prompt once (:mod:`rlhf_jax.rollout.shared_prefix`).

- prompts ``[N, P]`` LEFT padded (``prompt_ids``, ``prompt_mask``);
- completions ``[N, G, C]`` RIGHT padded (by default ``input_ids`` / ``attention_mask``; DPO calls
  them ``completion_ids`` / ``completion_mask``), reshaped to ``[N * G, C]`` for the model.

:func:`split_shared_prefix` turns left-padded whole sequences ``[N, G, T]`` (what
:func:`rlhf_jax.feedback.encode_pairs` / ``encode_rankings`` give) into that layout by cutting each
group at the longest prefix its real sequences share (the prompt, and any common start of the
completions: computing a shared token once or per completion gives the same outputs).
:func:`grouped_rows` picks a batch's rows and cuts columns that are padding in every row, on the
prompt side and the completion side separately.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlhf_jax.train.batching import trim_padding

PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def layout_groups(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int] | None]], *,
                  pad_id: int, prompt_width: int | None = None, completion_width: int | None = None,
                  ids_key: str = "input_ids", mask_key: str = "attention_mask") -> dict[str, np.ndarray]:
    """int32 arrays of ``N`` groups: ``prompt_ids``/``prompt_mask`` ``[N, P]`` (left padded) and
    completions ``[N, G, C]`` (right padded; ``None`` or ``[]``: an all-padding slot).

    Widths default to the longest prompt / completion (at least 1 column each, so that every
    array has a column the model can read)."""
    n = len(prompts)
    if len(completions) != n:
        raise ValueError(f"layout_groups: {n} prompts but {len(completions)} completion groups")
    g = max((len(c) for c in completions), default=1)
    if any(len(c) != g for c in completions):
        raise ValueError(f"layout_groups: every group needs the same number of completions ({g}); pad with None")
    p = prompt_width or max(1, max((len(x) for x in prompts), default=1))
    c = completion_width or max(1, max((len(x or ()) for cs in completions for x in cs), default=1))
    prompt_ids = np.full((n, p), pad_id, np.int32)
    prompt_mask = np.zeros((n, p), np.int32)
    ids = np.full((n, g, c), pad_id, np.int32)
    mask = np.zeros((n, g, c), np.int32)
    for i, (pr, cs) in enumerate(zip(prompts, completions)):
        if len(pr) > p:
            raise ValueError(f"layout_groups: prompt {i} has {len(pr)} tokens, more than the width {p}")
        if len(pr):
            prompt_ids[i, p - len(pr):] = pr
            prompt_mask[i, p - len(pr):] = 1
        for j, comp in enumerate(cs):
            comp = list(comp or ())
            if len(comp) > c:
                raise ValueError(f"layout_groups: completion {j} of group {i} has {len(comp)} tokens, more than "
                                 f"the width {c}")
            ids[i, j, :len(comp)] = comp
            mask[i, j, :len(comp)] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, ids_key: ids, mask_key: mask}


def split_shared_prefix(input_ids: np.ndarray, attention_mask: np.ndarray, *, pad_id: int) -> dict[str, np.ndarray]:
    """Whole sequences ``[N, G, T]`` (left or right padded; all-padding rows are absent slots)
    cut at the longest prefix of real tokens that the present sequences of each group share:
    :func:`layout_groups`' arrays, with ``input_ids`` / ``attention_mask`` the completions.
    Prompt + completion of each row is exactly the row's real tokens."""
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"split_shared_prefix: expected [N, G, T] ids and mask of one shape, got "
                         f"{input_ids.shape} and {attention_mask.shape}")
    prompts, groups = [], []
    for ids, mask in zip(input_ids, attention_mask):
        seqs = [row[m > 0].tolist() for row, m in zip(ids, mask)]
        present = [s for s in seqs if s]
        shared = 0
        if present:
            shortest = min(len(s) for s in present)
            while shared < shortest and all(s[shared] == present[0][shared] for s in present):
                shared += 1
        prompts.append(present[0][:shared] if present else [])
        groups.append([s[shared:] if s else None for s in seqs])
    return layout_groups(prompts, groups, pad_id=pad_id)


def grouped_rows(arrays: dict, idx, pad_multiple: int, *, mask_key: str = "attention_mask") -> dict:
    """Rows ``idx`` of host grouped arrays, the prompt side and the completion side each cut to
    its longest row, rounded up to a multiple of ``pad_multiple`` (:func:`trim_padding`);
    per-row arrays (margins, ranks, reference log-probs) pass through."""
    picked = {k: np.asarray(v)[idx] for k, v in arrays.items()}
    prompt = trim_padding({k: picked[k] for k in PROMPT_KEYS}, multiple=pad_multiple, mask_key="prompt_mask")
    rest = trim_padding({k: v for k, v in picked.items() if k not in PROMPT_KEYS}, multiple=pad_multiple,
                        mask_key=mask_key)
    return {**prompt, **rest}
