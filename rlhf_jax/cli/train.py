"""``rlhf-jax sft | reward | ppo``: one command per training stage, driven by the same frozen
configs as the Python API (every field a flag, ``--config FILE.json`` under the flags). Datasets
are JSONL, JSON lists, Parquet or ``save_to_disk`` folders in TRL's standard or conversational
formats (``--format``, ``--split``, ``--chat_template``)."""

from __future__ import annotations

import json
import os

from rlhf_jax.cli.common import (add_data_flags, add_model_flags, add_reward_flags, chat_template_of, data_config,
                                 load_data, load_model, with_run, write_config)
from rlhf_jax.config_args import add_config_flags, config_from_args

GENERATION = "generation_config.json"
"""Written into a PPO run folder: how its policy sampled (``rlhf-jax export`` copies it)."""


def policy_generation_config(model_config, tokenizer, sampling, template) -> dict:
    """``generation_config.json`` fields for a policy sampled with ``sampling``: its stop tokens
    when resolved, else the model's EOS ids, the tokenizer's EOS and the template's end of turn."""
    from rlhf_jax.data import stop_token_ids
    from rlhf_jax.export import generation_config_dict

    eos = sampling.eos_ids if sampling.eos_ids is not None else stop_token_ids(tokenizer, model_config, template)
    pad = sampling.pad_id if sampling.pad_id is not None else model_config.pad_token_id
    return generation_config_dict(sampling, eos, pad_token_id=pad)


def save_policy(out: str, model_config, base, trainable, tokenizer, generation_config: dict | None = None) -> str:
    """The trained policy as a Hugging Face folder ``out/policy`` (an adapter merged in), and an
    adapter also as a PEFT folder ``out/policy_adapter``; returns what was written."""
    from rlhf_jax.export import save_hf_folder, save_peft_adapter
    from rlhf_jax.lora import lora_config_of

    lc = lora_config_of(trainable)
    if lc is None:  # full fine-tuning: the state holds the whole policy, there is no adapter
        save_hf_folder(os.path.join(out, "policy"), model_config, trainable, tokenizer=tokenizer,
                       generation_config=generation_config)
        return f"{out}/policy (full); PEFT adapter skipped: the policy is fully fine-tuned"
    save_peft_adapter(os.path.join(out, "policy_adapter"), model_config, trainable.tree, lc)
    tokenizer.save_pretrained(os.path.join(out, "policy_adapter"))
    save_hf_folder(os.path.join(out, "policy"), model_config, base, tokenizer=tokenizer, lora=trainable.tree,
                   lora_config=lc, generation_config=generation_config)
    return f"{out}/policy (merged) and {out}/policy_adapter (PEFT)"


def cmd_sft(args) -> int:
    from rlhf_jax.export import save_hf_folder
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.train import SFTConfig, train_sft
    from rlhf_jax.train.batching import check_context

    cfg = with_run(config_from_args(SFTConfig, args, config_file=args.config), args)
    data = load_data(args, "data")
    mc, params, tok = load_model(args)
    check_context(mc, who="sft", max_length=cfg.max_length)
    write_config(args.out, cfg)
    res = train_sft(mc, params, tok, data, cfg, data_config=data_config(args))
    # nothing was sampled: the export samples the trained distribution as is, up to the trained length
    gen = policy_generation_config(mc, tok, SamplingConfig(max_new_tokens=cfg.max_length), chat_template_of(tok, args))
    save_hf_folder(os.path.join(args.out, "model"), mc, res.params, tokenizer=tok, generation_config=gen)
    print(f"sft: {res.report.summary()}")
    print(f"sft: {len(res.history)} steps, final loss {res.history[-1]['loss']:.4f}, {res.eval}; "
          f"{res.skipped_examples} examples skipped; model -> {args.out}/model")
    return 0


def cmd_reward(args) -> int:
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.scoring import normalize_on_policy_samples, save_reward_model
    from rlhf_jax.train import RewardConfig, prepare_prompts, train_reward_model
    from rlhf_jax.train.batching import check_context

    cfg = with_run(config_from_args(RewardConfig, args, config_file=args.config), args)
    data = load_data(args, "pairs")
    mc, base, tok = load_model(args)
    check_context(mc, who="reward", max_length=cfg.max_length)
    write_config(args.out, cfg)
    res = train_reward_model(mc, base, tok, data, cfg, data_config=data_config(args))
    rm = res.reward_model
    if args.normalize_samples > 0:  # mean 0 / std 1 on the SFT model's own samples, as PPO will feed it
        prompts = prepare_prompts(mc, tok, data, SamplingConfig(max_new_tokens=args.max_new_tokens),
                                  data_config=data_config(args), who="reward")
        first = list({text: i for i, text in reversed(list(enumerate(prompts.texts)))}.values())
        take = sorted(first)[: args.normalize_samples]
        if len(take) < 2:
            raise ValueError(f"reward: --normalize-samples needs >= 2 distinct prompts, {args.pairs} has {len(take)}; "
                             "pass --normalize-samples 0")
        batch = prompts.encoded.batch
        rm, _ = normalize_on_policy_samples(mc, rm, base, batch.tokens[take], batch.mask[take],
                                            sampling=prompts.sampling, seed=cfg.run.seed)
    save_reward_model(os.path.join(args.out, "reward_model"), rm)
    if res.data_report is not None:
        print(f"reward: {res.data_report.summary()}")
    print(f"reward: held-out {res.eval}; {res.report.skipped} pairs skipped; model -> {args.out}/reward_model")
    return 0


def cmd_ppo(args) -> int:
    from rlhf_jax.scoring import build_scorer
    from rlhf_jax.train import PPOConfig, train_ppo
    from rlhf_jax.train.batching import check_context

    cfg = with_run(config_from_args(PPOConfig, args, config_file=args.config), args)
    data = load_data(args, "prompts", field=args.prompt_field)
    mc, base, tok = load_model(args)
    reward = build_scorer(args.reward, args.reward_fn, model_config=mc, base=base, tokenizer=tok, dtype=args.dtype)
    check_context(mc, who="ppo", prompt_length=cfg.max_prompt_length, new_tokens=cfg.sampling.max_new_tokens)
    write_config(args.out, cfg)
    res = train_ppo(mc, base, tok, data, reward, cfg, data_config=data_config(args))
    gen = policy_generation_config(mc, tok, res.sampling, chat_template_of(tok, args))
    with open(os.path.join(args.out, GENERATION), "w") as f:
        json.dump(gen, f, indent=2)
    saved = save_policy(args.out, mc, base, res.state.params["policy"], tok, gen)
    last = res.history[-1]
    print(f"ppo: {res.report.summary()}; stop tokens {list(res.sampling.eos_ids)}")
    print(f"ppo: stopped at {res.stop_reason} after {len(res.history)} steps; score {last['score']:.3f}, KL "
          f"{last['kl']:.3f}; policy -> {saved}")
    return 0


def add_train_commands(sub) -> None:
    from rlhf_jax.train import PPOConfig, RewardConfig, SFTConfig

    p = sub.add_parser("sft", help="supervised fine-tuning on any SFT dataset (text, messages, prompt/completion); "
                                   "writes the RLHF base")
    add_model_flags(p)
    p.add_argument("--data", required=True,
                   help="language modeling ({text} or {messages}: multi-turn, loss on the assistant turns) or "
                        "prompt-completion rows, strings or message lists: .jsonl, .json, .parquet or a "
                        "save_to_disk folder")
    add_data_flags(p)
    add_config_flags(p, SFTConfig)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("reward", help="train a reward model (base + LoRA + score head) on preference pairs")
    add_model_flags(p)
    p.add_argument("--pairs", required=True,
                   help="preference rows (prompt, chosen, rejected[, margin]) or implicit (chosen, rejected), "
                        "strings or message lists: .jsonl, .json, .parquet or a save_to_disk folder")
    add_data_flags(p)
    p.add_argument("--normalize-samples", type=int, default=256,
                   help="normalise scores to mean 0 / std 1 on the base model's samples for this many prompts (0: off)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of those samples")
    add_config_flags(p, RewardConfig)
    p.set_defaults(func=cmd_reward)

    p = sub.add_parser("ppo", help="PPO with a KL penalty: policy and critic LoRA on the frozen base "
                                   "(--policy_lora.off / --critic_lora.off: full fine-tuning)")
    add_model_flags(p)
    add_reward_flags(p, required=True)
    p.add_argument("--prompts", required=True,
                   help="prompt-only, prompt-completion or preference rows (their prompts), strings or message "
                        "lists (rendered with the chat template; generation then stops at its end of turn too): "
                        ".jsonl, .json, .parquet or a save_to_disk folder")
    p.add_argument("--prompt-field", default="prompt", help="name of the prompt field (default: prompt)")
    add_data_flags(p)
    add_config_flags(p, PPOConfig)
    p.set_defaults(func=cmd_ppo)
