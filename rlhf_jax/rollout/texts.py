"""Text in, text out: sample several completions per prompt with the jitted sampler."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlhf_jax.rollout.bucketing import left_pad
from rlhf_jax.rollout.config import SamplingConfig
from rlhf_jax.rollout.sampler import Sampler


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray, *, skip_special_tokens: bool = False
                     ) -> list[str]:
    """Decode each row's real response tokens (the EOS token included unless skipped)."""
    return [tokenizer.decode(r[m > 0].tolist(), skip_special_tokens=skip_special_tokens)
            for r, m in zip(np.asarray(tokens), np.asarray(mask))]


def sample_texts(sampler: Sampler, variables: dict, tokenizer, prompts: Sequence[str], *, n_samples: int = 1,
                 batch_size: int = 32, seed: int = 0, skip_special_tokens: bool = False,
                 progress: bool = False) -> list[list[str]]:
    """``n_samples`` completions for each prompt, ``[prompt][sample]``.

    All prompts are left padded to one bucket length and every batch has ``batch_size`` rows
    (the last one padded with repeats whose results are dropped), so the sampler compiles once.
    Batch ``i`` uses key ``fold_in(PRNGKey(seed), i)``.
    """
    if not prompts:
        raise ValueError("sample_texts: no prompts")
    ids = tokenizer(list(prompts))["input_ids"]
    batch = left_pad(ids, pad_id=int(sampler.config.resolve(sampler.model.config)[1]))
    rows = np.repeat(np.arange(len(prompts)), n_samples)
    out: list[list[str]] = [[] for _ in prompts]
    starts = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sampling", leave=False)
    key = jax.random.PRNGKey(seed)
    for i, s in enumerate(starts):
        take = rows[s:s + batch_size]
        padded = np.concatenate([take, np.full(batch_size - len(take), take[-1])])
        ro = sampler(variables, batch.tokens[padded], batch.mask[padded], jax.random.fold_in(key, i))
        texts = decode_responses(tokenizer, ro.response_tokens, ro.response_mask,
                                 skip_special_tokens=skip_special_tokens)
        for r, t in zip(take, texts[:len(take)]):
            out[int(r)].append(t)
    return out
