"""Offline preference optimisation (DPO, IPO, cDPO) against the frozen base as the reference: the
config, the ``(init, step)`` pair, the data encoding (every preference format, each prompt once)
the driver and the memory estimate."""

from rlhf_jax.train.dpo.algorithm import (dpo_batch_loss, dpo_objective, dpo_rows, make_dpo, pair_logprobs,
                                          precompute_reference, reference_logprobs)
from rlhf_jax.train.dpo.config import DPOBatch, DPOConfig
from rlhf_jax.train.dpo.data import encode_dpo_data, layout_pairs
from rlhf_jax.train.dpo.driver import DPOResult, check_dpo_lengths, dpo_evaluate, train_dpo
from rlhf_jax.train.dpo.memory import DPOMemory, dpo_memory

__all__ = [
    "DPOBatch", "DPOConfig", "DPOMemory", "DPOResult", "check_dpo_lengths", "dpo_batch_loss", "dpo_evaluate",
    "dpo_memory", "dpo_objective", "dpo_rows", "encode_dpo_data", "layout_pairs", "make_dpo", "pair_logprobs",
    "precompute_reference", "reference_logprobs", "train_dpo",
]
