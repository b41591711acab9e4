"""The prompts of an RL run from any dataset that has prompts: token ids for the sampler, the
original prompts for Python rewards, and the sampling config with its stop tokens.

Prompt-only, prompt-completion and preference rows (an implicit preference's prompt is the shared
part), standard or conversational, from a path, a ``datasets.Dataset`` or a list; a plain list of
strings is read as prompt-only rows. Conversational prompts are rendered with the chat template and
its generation prompt, and generation then stops at the model's EOS ids, the tokenizer's EOS or
the template's end of turn (:func:`rlhf_jax.data.stop_token_ids`); standard prompts stop at the
EOS ids. Every RL driver (PPO, and any critic-free one) takes its prompts through
:func:`prepare_prompts`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NamedTuple

from rlhf_jax.data import DataConfig, EncodeReport, encode_prompt_data, resolve_chat_template, stop_token_ids
from rlhf_jax.model import ModelConfig
from rlhf_jax.rollout import EncodedPrompts, SamplingConfig, left_pad
from rlhf_jax.train.batching import check_context


class RLPrompts(NamedTuple):
    """Prompts ready for generation."""

    encoded: EncodedPrompts
    """All prompts tokenised and left padded to one bucket length (``truncated`` counted)."""
    prompts: list[Any]
    """The prompts as the data holds them (strings or message lists): what reward functions and
    monitors get."""
    texts: list[str]
    """The texts the ids were made from (rendered with the template for conversations)."""
    sampling: SamplingConfig
    """The sampling config with ``pad_id`` and ``eos_ids`` (stop tokens) filled in."""
    report: EncodeReport
    """What was read, truncated and skipped."""


def as_prompt_data(data: Any) -> Any:
    """``data`` with a list of strings turned into prompt-only rows ``{"prompt": text}``."""
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, str) for x in data):
        return [{"prompt": x} for x in data]
    return data


def resolve_sampling(sampling: SamplingConfig, tokenizer, model_config: ModelConfig | None = None,
                     template=None) -> SamplingConfig:
    """``sampling`` with the tokenizer's pad id when it names none, and, when it names no
    ``eos_ids``, the stop tokens: the model's EOS ids, the tokenizer's EOS and (``template``
    given) the chat template's end-of-turn token."""
    if sampling.pad_id is None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (often the EOS token) first")
        sampling = dataclasses.replace(sampling, pad_id=int(tokenizer.pad_token_id))
    if sampling.eos_ids is None and model_config is not None:
        sampling = dataclasses.replace(sampling, eos_ids=stop_token_ids(tokenizer, model_config, template))
    return sampling


def prepare_prompts(model_config: ModelConfig, tokenizer, data: Any, sampling: SamplingConfig, *,
                    data_config: DataConfig = DataConfig(), max_prompt_length: int | None = None,
                    who: str = "ppo", bucket: int | str = 16) -> RLPrompts:
    """Read and encode the prompts of ``data`` and resolve the sampling config.

    Args:
      data: prompt-only, prompt-completion or preference rows (see the module docstring), or a
        list of prompt strings.
      sampling: how the policy generates; a missing ``pad_id``/``eos_ids`` is filled in.
      max_prompt_length: longer prompts lose tokens from the left (a leading BOS is kept; counted
        and reported on stderr); ``None``: the model's context minus ``max_new_tokens``.
      who: the stage, for messages.

    Raises:
      DataError: a row that fits no prompt format (naming the file, row and formats), a
        conversation without a chat template (naming ``--chat_template``).
      ValueError: the prompts and ``max_new_tokens`` do not fit the model's context.
    """
    check_context(model_config, who=who, prompt_length=max_prompt_length, new_tokens=sampling.max_new_tokens)
    limit = max_prompt_length or (model_config.max_position_embeddings - sampling.max_new_tokens)
    if limit < 1:
        raise ValueError(f"{who}: no room for a prompt (limit {limit} tokens): lower max_new_tokens or raise the "
                         "prompt length limit")
    data = as_prompt_data(data)
    prompts, report = encode_prompt_data(data, tokenizer, data_config=data_config, max_length=limit)
    if not prompts.input_ids:
        raise ValueError(f"{who}: {report.source} holds no usable prompt ({report.summary()})")
    if report.truncated or report.n_skipped:
        print(f"{who}: {report.summary()} (prompts longer than {limit} tokens keep their last ones)", file=sys.stderr)
    conversational = report.format.startswith("conversational")
    template = resolve_chat_template(tokenizer, data_config.chat_template) if conversational else None
    sampling = resolve_sampling(sampling, tokenizer, model_config, template)
    batch = left_pad(prompts.input_ids, pad_id=sampling.pad_id, bucket=bucket, max_length=limit)
    return RLPrompts(EncodedPrompts(batch, report.truncated), list(prompts.prompts), list(prompts.texts), sampling,
                     report)
