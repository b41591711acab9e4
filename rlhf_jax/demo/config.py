"""The demo's settings: one frozen config, a full default and a ``--quick`` preset."""

from __future__ import annotations

import dataclasses

from rlhf_jax.config_checks import at_least, check
from rlhf_jax.lora import LoraConfig
from rlhf_jax.toyworld import CorpusConfig, WorldConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Sizes and steps of every stage of the toy-world RLHF pipeline."""

    seed: int = 0
    """Seed of every stage."""
    world: WorldConfig = WorldConfig(n_prompts=324, held_out_fraction=0.65,
                                     corpus=CorpusConfig(n_examples=6000))
    """The synthetic world (324 prompts, 65% held out so evaluation has >= 200 prompts)."""
    hidden_size: int = 64
    """Width of the Llama-style model trained from scratch."""
    num_layers: int = 2
    """Transformer blocks."""
    max_length: int = 48
    """Context (prompt + completion): prompts fit in 16 tokens, completions in 24."""
    sft_steps: int = 500
    """SFT updates (full fine-tuning from random init)."""
    sft_batch_size: int = 32
    """SFT batch size."""
    sft_learning_rate: float = 3e-3
    """SFT learning rate."""
    label_samples: int = 4
    """Completions per training prompt shown to the labelers."""
    labelers_per_prompt: int = 3
    """Labelers per prompt (of a pool of 5, one of whom partly misreads the instructions)."""
    reward_lora: LoraConfig = LoraConfig(rank=8, alpha=16.0)
    """The reward adapter over the SFT base."""
    reward_steps: int = 300
    """Reward-model updates."""
    reward_batch_size: int = 32
    """Pairs per reward update."""
    reward_learning_rate: float = 3e-3
    """Reward-model learning rate."""
    policy_lora: LoraConfig = LoraConfig(rank=8, alpha=16.0)
    """The policy adapter."""
    ppo_steps: int = 60
    """PPO steps of the KL-penalised run."""
    ppo_batch_size: int = 32
    """Episodes per PPO step."""
    ppo_learning_rate: float = 2e-3
    """PPO learning rate (policy and critic adapters)."""
    kl_coef: float = 0.2
    """KL coefficient of the main run."""
    max_new_tokens: int = 24
    """Longest completion."""
    hacking_steps: int = 120
    """PPO steps of the reward-hacking run (KL coefficient 0)."""
    grpo_steps: int = 0
    """GRPO steps of a run next to PPO's (``rlhf-jax demo --grpo``): the same reward model, KL
    coefficient, learning rate and episodes per step (``ppo_batch_size / grpo_group_size`` prompts x
    ``grpo_group_size`` completions), evaluated and reported with the others; 0: no GRPO run."""
    grpo_group_size: int = 4
    """G: completions per prompt of the GRPO run (a divisor of ``ppo_batch_size``)."""
    eval_prompts: int = 200
    """Held-out prompts in the evaluation."""
    eval_samples: int = 4
    """Samples per prompt in the evaluation."""

    def __post_init__(self):
        at_least(self, "grpo_steps", 0, integer=True)
        at_least(self, "grpo_group_size", 2, integer=True)
        check(self, "grpo_group_size", self.ppo_batch_size % self.grpo_group_size == 0,
              f"a divisor of ppo_batch_size = {self.ppo_batch_size}")

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A miniature of the same pipeline (seconds to a minute): every stage, tiny sizes."""
        return cls(world=WorldConfig(n_prompts=80, held_out_fraction=0.5, corpus=CorpusConfig(n_examples=600)),
                   hidden_size=32, sft_steps=200, sft_batch_size=16, sft_learning_rate=1e-2, label_samples=4,
                   reward_steps=20, reward_batch_size=8, ppo_steps=3, ppo_batch_size=16, hacking_steps=3, max_new_tokens=12,
                   eval_prompts=16, eval_samples=2, reward_lora=LoraConfig(rank=4, alpha=8.0),
                   policy_lora=LoraConfig(rank=4, alpha=8.0))
