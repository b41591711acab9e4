"""The demo's settings: one frozen config, a full default and a ``--quick`` preset."""

from __future__ import annotations

import dataclasses
import math

from rlhf_jax.config_checks import at_least, check, in_range, one_of, positive
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
    flagged: str = "last"
    """How completions the labelers flag (nonsense, off topic) enter the preference pairs:
    ``"drop"`` every pair that has one, or rank them ``"last"``, below every ranked completion of
    their prompt (see :func:`rlhf_jax.feedback.feedback_to_pairs`)."""
    negatives: float = 0.0
    """Share of the distinct preferred completions that also enter the reward data as a pair with a
    corrupted copy of themselves ranked below (shuffled, spliced with another prompt's answer, or
    stuttered; :func:`rlhf_jax.feedback.add_corrupted_negatives`); 0: the labelers' pairs only."""
    reward_lora: LoraConfig = LoraConfig(rank=8, alpha=16.0)
    """The reward adapter over the SFT base."""
    reward_steps: int = 300
    """Reward-model updates."""
    reward_batch_size: int = 32
    """Pairs per reward update."""
    reward_learning_rate: float = 3e-3
    """Reward-model learning rate."""
    reward_eval_every: int = 25
    """Evaluate each reward model on its held-out pairs (and as many training pairs) every N steps."""
    reward_early_stopping: int = 3
    """Stop a reward model after this many evaluations without a better held-out accuracy and keep
    its best state (0: train ``reward_steps``)."""
    reward_label_smoothing: float = 0.1
    """Label smoothing of the Bradley-Terry loss (each label taken as wrong with this probability)."""
    reward_members: int = 2
    """Reward models PPO optimises (seeds ``seed``, ``seed + 1``...): with more than one, the RL
    reward is their mean minus ``uncertainty_coef`` times their standard deviation."""
    uncertainty_coef: float = 1.0
    """Weight of the members' disagreement subtracted from the RL reward."""
    reward_clip: float | None = 0.1
    """Upper bound of the RL reward (in the reward models' units: standard deviations of the SFT
    model's samples above their mean): completions scoring above it all earn it, so the KL-penalised
    policy keeps every good answer instead of the few ranked highest (``None``: unbounded). It caps
    the KL-penalised PPO run's and the GRPO run's reward; the no-KL hacking run optimises the bare
    reward (no guard at all) and the evaluation reports the unbounded reward."""
    monitor_members: int = 2
    """Further reward models, trained alike but never optimised: the over-optimisation monitor
    logs the gap between the optimised reward and their mean during PPO (0: no monitor)."""
    gap_threshold: float = 0.5
    """The monitor's stop threshold (5-step mean of the gap): the report checks that the no-KL run's
    gap ends at or above it, rising as the gold falls, and that the KL run's stays below it."""
    stop_on_gap: bool = False
    """Apply that stop rule to the PPO runs (off: both run in full, so the figure shows them)."""
    policy_lora: LoraConfig = LoraConfig(rank=8, alpha=16.0)
    """The policy adapter."""
    ppo_steps: int = 120
    """PPO steps of the KL-penalised run."""
    ppo_batch_size: int = 32
    """Episodes per PPO step."""
    ppo_learning_rate: float = 1e-3
    """PPO learning rate (policy and critic adapters; both PPO runs). At 2e-3 and 60 steps the KL
    run's per-family outcome changed from run to run (which family lost its on-topic rate); 1e-3 and
    120 steps move it less and more evenly (``docs/demo_collapse.md``)."""
    entropy_coef: float = 0.0
    """PPO entropy bonus."""
    kl_coef: float = 0.5
    """KL coefficient of the main run (0.2 collapsed the policy onto a few answers per prompt family,
    1.0 kept too little of the toxicity reduction; 0.5 with the reward capped at 0.1, the
    uncertainty penalty 1.0 and 120 steps at learning rate 1e-3: ``docs/demo_collapse.md``)."""
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
    dpo_steps: int = 0
    """DPO steps of a run next to PPO's (``rlhf-jax demo --dpo``: as many as the reward model's): the
    labelers' preference pairs with the reward model's batch size and held-out fraction (split by
    the same seed), a policy adapter like PPO's on the SFT model (the reference: the adapter off),
    evaluated and reported with the others; 0: no DPO run."""
    dpo_beta: float = 0.1
    """DPO's beta (the implicit reward's scale; TRL's default)."""
    dpo_learning_rate: float = 1e-3
    """DPO learning rate (the policy adapter)."""
    eval_prompts: int = 200
    """Held-out prompts in the evaluation."""
    eval_samples: int = 4
    """Samples per prompt in the evaluation."""

    def __post_init__(self):
        at_least(self, "grpo_steps", 0, integer=True)
        at_least(self, "dpo_steps", 0, integer=True)
        positive(self, "dpo_beta")
        positive(self, "dpo_learning_rate")
        at_least(self, "grpo_group_size", 2, integer=True)
        check(self, "grpo_group_size", self.ppo_batch_size % self.grpo_group_size == 0,
              f"a divisor of ppo_batch_size = {self.ppo_batch_size}")
        one_of(self, "flagged", ("drop", "last"))
        in_range(self, "negatives", 0, 1)
        at_least(self, "reward_eval_every", 1, integer=True)
        at_least(self, "reward_early_stopping", 0, integer=True)
        in_range(self, "reward_label_smoothing", 0, 0.5, high_open=True)
        at_least(self, "reward_members", 1, integer=True)
        at_least(self, "monitor_members", 0, integer=True)
        at_least(self, "uncertainty_coef", 0)
        check(self, "reward_clip", self.reward_clip is None or math.isfinite(self.reward_clip), "a finite number or None")
        positive(self, "gap_threshold")
        at_least(self, "kl_coef", 0)
        at_least(self, "entropy_coef", 0)

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A miniature of the same pipeline (seconds to a minute): every stage, tiny sizes."""
        return cls(world=WorldConfig(n_prompts=80, held_out_fraction=0.5, corpus=CorpusConfig(n_examples=600)),
                   hidden_size=32, sft_steps=200, sft_batch_size=16, sft_learning_rate=1e-2, label_samples=4,
                   reward_steps=20, reward_batch_size=8, ppo_steps=3, ppo_batch_size=16, hacking_steps=3, max_new_tokens=12,
                   eval_prompts=16, eval_samples=2, reward_lora=LoraConfig(rank=4, alpha=8.0),
                   policy_lora=LoraConfig(rank=4, alpha=8.0))
