"""Datasets in TRL's standard and conversational formats, chat templates, assistant-only loss
masks, packing, and the tokenised forms the stages take (SFT rows, prompts, preference pairs)."""

from rlhf_jax.data.chat import (ChatTemplate, end_of_turn_ids, render, render_completion, render_prompt,
                                require_template, resolve_chat_template, stop_token_ids)
from rlhf_jax.data.dataset import DataConfig, EncodeReport, Loaded, bos_ids, load_dataset, padding_id, text_ids
from rlhf_jax.data.encode import (SFTBatch, SFTDataConfig, SFTExample, encode_sft_data, pad_left, sft_tokens,
                                  tokenize_sft)
from rlhf_jax.data.errors import ChatTemplateError, DataError
from rlhf_jax.data.formats import (EXPECTED, FORMAT_NAMES, ROLES, DatasetFormat, Kind, Parts, check_messages,
                                   detect_format, parse_format, row_format, row_parts, split_shared_messages,
                                   split_shared_text)
from rlhf_jax.data.masks import ChatTokens, assistant_masks
from rlhf_jax.data.packing import PackedBatch, PackReport, pack_examples
from rlhf_jax.data.prompts import Prompts, encode_preference_data, encode_prompt_data, prompt_tokens
from rlhf_jax.data.sources import Rows, load_rows

__all__ = [
    "EXPECTED", "FORMAT_NAMES", "ROLES", "ChatTemplate", "ChatTemplateError", "ChatTokens", "DataConfig", "DataError",
    "DatasetFormat", "EncodeReport", "Kind", "Loaded", "PackReport", "PackedBatch", "Parts", "Prompts", "Rows",
    "SFTBatch", "SFTDataConfig", "SFTExample", "assistant_masks", "bos_ids", "check_messages", "detect_format",
    "encode_preference_data", "encode_prompt_data", "encode_sft_data", "end_of_turn_ids", "load_dataset",
    "load_rows", "pack_examples", "pad_left", "padding_id", "parse_format", "prompt_tokens", "render",
    "render_completion", "render_prompt", "require_template", "resolve_chat_template", "row_format", "row_parts",
    "sft_tokens", "split_shared_messages", "split_shared_text", "stop_token_ids", "text_ids", "tokenize_sft",
]
