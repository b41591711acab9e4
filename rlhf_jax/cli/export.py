"""``rlhf-jax export``: a training run's checkpoint -> Hugging Face folder or PEFT adapter."""

from __future__ import annotations

import json
import os


def _generation_config(args, run_cfg: dict, mc, tok) -> dict:
    """How the exported policy samples: what a PPO run recorded, else pure sampling up to the
    run's length with the model's EOS ids and the chat template's end of turn."""
    from rlhf_jax.cli.common import chat_template_of
    from rlhf_jax.cli.train import GENERATION, policy_generation_config
    from rlhf_jax.config_args import build_config
    from rlhf_jax.rollout import SamplingConfig

    recorded = os.path.join(args.run, GENERATION)
    if os.path.isfile(recorded):
        with open(recorded) as f:
            return json.load(f)
    if isinstance(run_cfg.get("sampling"), dict):
        sampling = build_config(SamplingConfig, run_cfg["sampling"])
    else:
        sampling = SamplingConfig(max_new_tokens=int(run_cfg.get("max_length") or 64))
    return policy_generation_config(mc, tok, sampling, chat_template_of(tok, args))


def cmd_export(args) -> int:
    from rlhf_jax.cli.common import load_model
    from rlhf_jax.config_args import build_config
    from rlhf_jax.export import export_from_checkpoint, save_hf_reward_model, save_peft_reward_adapter
    from rlhf_jax.lora import LoraConfig, lora_config_of, outer_params
    from rlhf_jax.scoring import RewardModel, load_reward_model
    from rlhf_jax.train.checkpoints import check_base, restore_raw, trainable_from_raw

    mc, base, tok = load_model(args)
    check_base(args.run, base, args.model)
    config_path = os.path.join(args.run, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{args.run}: no config.json (a run folder of `rlhf-jax sft|reward|ppo`)")
    with open(config_path) as f:
        run_cfg = json.load(f)
    lora_of = lambda key: None if run_cfg.get(key) is None else build_config(LoraConfig, run_cfg[key])
    state, step = restore_raw(args.run, args.step)
    params = state["params"]
    if args.stage == "reward":
        folder = os.path.join(args.run, "reward_model")
        if args.step is None and os.path.isfile(os.path.join(folder, "reward_config.json")):
            rm = load_reward_model(folder)  # the final, normalised model
        else:
            rm = RewardModel(trainable_from_raw(params["model"], lora_of("lora")), params["head"])
        if args.format == "peft":
            out = save_peft_reward_adapter(args.out, mc, rm, base_model_name_or_path=os.path.abspath(args.model))
            tok.save_pretrained(out)
            print(f"export: reward adapter of {args.run} (step {step}) -> {out} (PEFT, SEQ_CLS with the score head)")
            return 0
        out = save_hf_reward_model(args.out, mc, base, rm, tokenizer=tok)
        print(f"export: reward model of {args.run} (step {step}) -> {out} (sequence classification)")
        return 0
    trainable = trainable_from_raw(params["policy"] if args.stage == "ppo" else params,
                                   lora_of("policy_lora" if args.stage == "ppo" else "lora"))
    lc = lora_config_of(trainable)
    out = export_from_checkpoint(mc, outer_params(base, trainable), None if lc is None else trainable.tree, lc,
                                 args.out, format=args.format, tokenizer=tok,
                                 generation_config=_generation_config(args, run_cfg, mc, tok),
                                 base_model_name_or_path=os.path.abspath(args.model))
    print(f"export: step {step} of {args.run} -> {out} ({args.format})")
    return 0


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="training checkpoint -> Hugging Face folder or PEFT adapter")
    p.add_argument("--model", required=True, help="the base model's Hugging Face folder the run trained over")
    p.add_argument("--run", required=True,
                   help="a run folder of `rlhf-jax sft|reward|ppo` (config.json + checkpoints/)")
    p.add_argument("--stage", required=True, choices=["sft", "reward", "ppo"], help="which trainer wrote the run")
    p.add_argument("--format", default="hf", choices=["hf", "peft"],
                   help="merged HF folder or PEFT adapter (--stage reward: a *ForSequenceClassification folder, or "
                        "a PEFT SEQ_CLS adapter with the score head)")
    p.add_argument("--chat_template", default=None, metavar="FILE.jinja",
                   help="a chat template to save with the exported tokenizer (default: the model folder's)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest intact one)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.set_defaults(func=cmd_export)
