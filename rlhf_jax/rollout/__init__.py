"""Rollouts: batched, EOS-aware sampling with a KV cache (prefill + ``lax.while_loop`` decode).

``generate`` is a plain function (jit it yourself); ``Sampler`` jits it once per prompt shape;
``left_pad`` / ``bucket_prompts`` keep the number of prompt shapes small.
"""

from rlhf_jax.rollout.bucketing import PromptBatch, bucket_length, bucket_prompts, bucket_sizes, left_pad
from rlhf_jax.rollout.config import SamplingConfig
from rlhf_jax.rollout.forward import (AUTO_CHUNK, head_of, hidden_logprobs_entropy, logit_chunk_size, response_exact_kl,
                                      response_hidden, response_logits,
                                      response_logprobs, response_logprobs_entropy, response_slice)
from rlhf_jax.rollout.generate import Rollout, check_lengths, generate, token_logprob
from rlhf_jax.rollout.prompts import EncodedPrompts, encode_prompts
from rlhf_jax.rollout.shared_prefix import (extend_cache, grouped_hidden, grouped_response_hidden,
                                          grouped_response_logits, grouped_response_logprobs, repeat_cache)
from rlhf_jax.rollout.sampler import Sampler, cached_sampler, make_generate_fn
from rlhf_jax.rollout.texts import decode_responses, sample_texts
from rlhf_jax.rollout.sampling import (
    categorical,
    filtered_logits,
    greedy,
    make_rule,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "AUTO_CHUNK", "EncodedPrompts", "PromptBatch", "Rollout", "Sampler", "SamplingConfig", "bucket_length", "bucket_prompts",
    "bucket_sizes", "cached_sampler", "categorical", "check_lengths", "decode_responses", "encode_prompts", "extend_cache", "filtered_logits",
    "generate", "greedy", "grouped_hidden", "grouped_response_hidden", "grouped_response_logits", "grouped_response_logprobs",
    "left_pad", "make_generate_fn", "make_rule", "head_of", "hidden_logprobs_entropy", "logit_chunk_size", "repeat_cache", "response_exact_kl", "response_hidden",
    "response_logits", "response_logprobs", "response_logprobs_entropy", "response_slice", "sample_texts", "token_logprob", "top_k_filter", "top_p_filter",
]
