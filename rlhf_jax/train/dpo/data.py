"""Preference pairs in every supported format -> host arrays of :class:`DPOBatch` (each prompt once).

Rows are read by :func:`rlhf_jax.data.encode_preference_data`: explicit (``prompt``, ``chosen``,
``rejected``) or implicit (the shared start of ``chosen`` and ``rejected`` is the prompt),
standard (text) or conversational (message lists through the tokenizer's chat template; a
completion is exactly the template's assistant turn, its end-of-turn token included). Standard
completions get the tokenizer's EOS when ``DPOConfig.append_eos`` (TRL does the same).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlhf_jax.data import DataConfig, EncodeReport, encode_preference_data, padding_id
from rlhf_jax.train.dpo.config import DPOConfig
from rlhf_jax.train.grouped_batches import layout_groups


def layout_pairs(pairs: list[dict], *, pad_id: int, bos_id: int | None, eos_id: int | None,
                 max_prompt_length: int, max_completion_length: int) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays ``prompt_ids``/``prompt_mask`` ``[N, P]`` (left padded) and ``completion_ids`` /
    ``completion_mask`` ``[N, 2, C]`` (chosen, rejected; right padded) from rows with
    ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, and what was done to them.

    ``eos_id`` (when given) ends each completion that does not already end with it. A prompt
    over ``max_prompt_length`` keeps its last tokens (and a leading ``bos_id``); a completion over
    ``max_completion_length`` keeps its first. A pair whose prompt is empty is skipped: nothing
    would predict its completions' first tokens. Returns ``(arrays, counts)`` with counts
    ``kept`` (indices), ``truncated`` (pairs that lost tokens) and ``skipped`` (by reason)."""
    prompts, groups, kept = [], [], []
    truncated, skipped = 0, {}
    for i, row in enumerate(pairs):
        prompt = [int(t) for t in row["prompt_ids"]]
        if not prompt:
            skipped["empty_prompt"] = skipped.get("empty_prompt", 0) + 1
            continue
        cut = False
        if len(prompt) > max_prompt_length:
            keep = 1 if bos_id is not None and prompt[0] == bos_id and max_prompt_length > 1 else 0
            prompt = prompt[:keep] + prompt[len(prompt) - (max_prompt_length - keep):]
            cut = True
        group = []
        for side in ("chosen_ids", "rejected_ids"):
            comp = [int(t) for t in row[side]]
            if eos_id is not None and (not comp or comp[-1] != eos_id):
                comp.append(eos_id)
            if len(comp) > max_completion_length:
                comp, cut = comp[:max_completion_length], True
            group.append(comp)
        truncated += cut
        prompts.append(prompt)
        groups.append(group)
        kept.append(i)
    arrays = layout_groups(prompts, groups, pad_id=pad_id, ids_key="completion_ids", mask_key="completion_mask")
    return arrays, {"kept": tuple(kept), "truncated": truncated, "skipped": skipped}


def encode_dpo_data(tokenizer, data: Any, config: DPOConfig, *, data_config: DataConfig = DataConfig()
                    ) -> tuple[dict[str, np.ndarray], EncodeReport]:
    """Host arrays of a :class:`DPOBatch` for every usable pair of ``data`` (a path, a
    ``datasets`` object or a list of rows in any preference format; ``data_config``: forced
    format, split, chat template) and the report of what was truncated or skipped."""
    pairs, report = encode_preference_data(data, tokenizer, data_config=data_config)
    conversational = report.format.startswith("conversational")
    eos = tokenizer.eos_token_id if config.append_eos and not conversational else None
    if config.append_eos and not conversational and eos is None:
        raise ValueError("dpo: append_eos is on but the tokenizer has no EOS token; set --append_eos false or give "
                         "the tokenizer an eos_token")
    arrays, counts = layout_pairs(pairs, pad_id=padding_id(tokenizer), bos_id=tokenizer.bos_token_id, eos_id=eos,
                                  max_prompt_length=config.max_prompt_length,
                                  max_completion_length=config.max_completion_length)
    kept = tuple(report.kept_indices[i] for i in counts["kept"])
    report = EncodeReport(source=report.source, format=report.format, rows=report.rows, kept_indices=kept,
                          truncated=counts["truncated"], skipped=dict(report.skipped, **counts["skipped"]))
    return arrays, report
