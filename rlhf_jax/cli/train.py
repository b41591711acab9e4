"""``rlhf-jax sft | reward | ppo``: one command per training stage, driven by the same frozen
configs as the Python API (every field a flag, ``--config FILE.json`` under the flags)."""

from __future__ import annotations

import argparse
import os

from rlhf_jax.cli.common import add_model_flags, column, read_rows, with_run, write_config
from rlhf_jax.config_args import add_config_flags, config_from_args


def save_policy(out: str, model_config, base, trainable, tokenizer) -> str:
    """The trained policy as a Hugging Face folder ``out/policy`` (an adapter merged in), and an
    adapter also as a PEFT folder ``out/policy_adapter``; returns what was written."""
    from rlhf_jax.export import save_hf_folder, save_peft_adapter
    from rlhf_jax.lora import lora_config_of

    lc = lora_config_of(trainable)
    if lc is None:  # full fine-tuning: the state holds the whole policy, there is no adapter
        save_hf_folder(os.path.join(out, "policy"), model_config, trainable, tokenizer=tokenizer)
        return f"{out}/policy (full); PEFT adapter skipped: the policy is fully fine-tuned"
    save_peft_adapter(os.path.join(out, "policy_adapter"), model_config, trainable.tree, lc)
    save_hf_folder(os.path.join(out, "policy"), model_config, base, tokenizer=tokenizer, lora=trainable.tree,
                   lora_config=lc)
    return f"{out}/policy (merged) and {out}/policy_adapter (PEFT)"


def cmd_sft(args) -> int:
    from rlhf_jax.export import save_hf_folder
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.train import SFTConfig, train_sft
    from rlhf_jax.train.batching import check_context

    cfg = with_run(config_from_args(SFTConfig, args, config_file=args.config), args)
    rows = read_rows(args.data)
    mc, params, tok = load_pretrained(args.model, dtype=args.dtype)
    check_context(mc, who="sft", max_length=cfg.max_length)
    write_config(args.out, cfg)
    res = train_sft(mc, params, tok, column(rows, "prompt", args.data), column(rows, "completion", args.data), cfg)
    save_hf_folder(os.path.join(args.out, "model"), mc, res.params, tokenizer=tok)
    print(f"sft: {len(res.history)} steps, final loss {res.history[-1]['loss']:.4f}, {res.eval}; "
          f"{res.skipped_examples} examples skipped (too long); model -> {args.out}/model")
    return 0


def cmd_reward(args) -> int:
    from rlhf_jax.feedback import load_pairs
    from rlhf_jax.model import Transformer, load_pretrained
    from rlhf_jax.rollout import Sampler, SamplingConfig, sample_texts
    from rlhf_jax.scoring import normalize_on_samples, save_reward_model
    from rlhf_jax.train import RewardConfig, train_reward_model
    from rlhf_jax.train.batching import check_context

    cfg = with_run(config_from_args(RewardConfig, args, config_file=args.config), args)
    pairs = load_pairs(args.pairs)
    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    check_context(mc, who="reward", max_length=cfg.max_length)
    write_config(args.out, cfg)
    res = train_reward_model(mc, base, tok, pairs, cfg)
    rm = res.reward_model
    if args.normalize_samples > 0:  # mean 0 / std 1 on the SFT model's own samples
        prompts = sorted(set(pairs["prompt"]))[: args.normalize_samples]
        sampler = Sampler(Transformer(mc), SamplingConfig(max_new_tokens=args.max_new_tokens))
        texts = sample_texts(sampler, {"params": base}, tok, prompts, seed=cfg.run.seed)
        rm, _ = normalize_on_samples(mc, rm, base, tok, prompts, [t[0] for t in texts], max_length=cfg.max_length)
    save_reward_model(os.path.join(args.out, "reward_model"), rm)
    print(f"reward: held-out {res.eval}; {res.report.skipped} pairs skipped; model -> {args.out}/reward_model")
    return 0


def cmd_ppo(args) -> int:
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.scoring import ModelScorer, load_reward_model
    from rlhf_jax.train import PPOConfig, train_ppo
    from rlhf_jax.train.batching import check_context

    cfg = with_run(config_from_args(PPOConfig, args, config_file=args.config), args)
    rows = read_rows(args.prompts)
    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    reward = ModelScorer(mc, load_reward_model(args.reward))
    check_context(mc, who="ppo", prompt_length=cfg.max_prompt_length, new_tokens=cfg.sampling.max_new_tokens)
    write_config(args.out, cfg)
    res = train_ppo(mc, base, tok, column(rows, args.prompt_field, args.prompts), reward, cfg)
    saved = save_policy(args.out, mc, base, res.state.params["policy"], tok)
    last = res.history[-1]
    print(f"ppo: stopped at {res.stop_reason} after {len(res.history)} steps; score {last['score']:.3f}, KL "
          f"{last['kl']:.3f}; policy -> {saved}")
    return 0


def add_train_commands(sub) -> None:
    from rlhf_jax.train import PPOConfig, RewardConfig, SFTConfig

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion JSONL; writes the RLHF base")
    add_model_flags(p)
    p.add_argument("--data", required=True, help="JSONL/Parquet with 'prompt' and 'completion' fields")
    add_config_flags(p, SFTConfig)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("reward", help="train a reward model (base + LoRA + score head) on preference pairs")
    add_model_flags(p)
    p.add_argument("--pairs", required=True, help="pairs JSONL/Parquet (prompt, chosen, rejected[, margin])")
    p.add_argument("--normalize-samples", type=int, default=256,
                   help="normalise scores to mean 0 / std 1 on the base model's samples for this many prompts (0: off)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of those samples")
    add_config_flags(p, RewardConfig)
    p.set_defaults(func=cmd_reward)

    p = sub.add_parser("ppo", help="PPO with a KL penalty: policy and critic LoRA on the frozen base "
                                   "(--policy_lora.off / --critic_lora.off: full fine-tuning)")
    add_model_flags(p)
    p.add_argument("--reward", required=True, help="reward model folder written by `rlhf-jax reward`")
    p.add_argument("--prompts", required=True, help="JSONL/Parquet with a 'prompt' field")
    p.add_argument("--prompt-field", default="prompt", help="name of the prompt field (default: prompt)")
    add_config_flags(p, PPOConfig)
    p.set_defaults(func=cmd_ppo)
