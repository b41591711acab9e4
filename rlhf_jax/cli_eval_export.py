"""``rlhf-jax evaluate`` and ``rlhf-jax export`` (the stages after training)."""

from __future__ import annotations

import argparse
import json
import os


def cmd_export(args) -> int:
    from rlhf_jax.config_args import build_config
    from rlhf_jax.export import export_from_checkpoint
    from rlhf_jax.lora import LoraConfig
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.train.run import restore_raw

    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    state, step = restore_raw(args.run, args.step)
    with open(os.path.join(args.run, "config.json")) as f:
        run_cfg = json.load(f)
    params = state["params"]
    if args.stage == "ppo" and run_cfg.get("policy_lora") is None:  # a fully fine-tuned policy
        adapter, lora, base = None, None, params["policy"]
    elif args.stage == "ppo":
        adapter, lora = params["policy"], build_config(LoraConfig, run_cfg["policy_lora"])
    elif run_cfg.get("lora") is None:  # full fine-tuning: the state holds the whole model
        adapter, lora = None, None
        base = params if args.stage == "sft" else params["params"]
    else:
        adapter = params if args.stage == "sft" else params["lora"]
        lora = build_config(LoraConfig, run_cfg["lora"])
    out = export_from_checkpoint(mc, base, adapter, lora, args.out, format=args.format, tokenizer=tok,
                                 base_model_name_or_path=os.path.abspath(args.model))
    print(f"export: step {step} of {args.run} -> {out} ({args.format})")
    return 0


def cmd_evaluate(args) -> int:
    from rlhf_jax.cli import _column, _read_rows
    from rlhf_jax.evaluate import EvalConfig, ModelSpec, compare, evaluate, format_comparison
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.train import ModelReward, load_reward_model

    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    ref = ModelSpec("reference", mc, {"params": base})
    models = [ref]
    for folder in args.policy:
        pmc, pparams, _ = load_pretrained(folder, dtype=args.dtype, tokenizer=False)
        if pmc.vocab_size != mc.vocab_size:
            raise SystemExit(f"error: {folder} has vocab {pmc.vocab_size}, the reference {mc.vocab_size}")
        models.append(ModelSpec(os.path.basename(os.path.normpath(folder)), pmc, {"params": pparams}))
    rows = _read_rows(args.prompts)
    prompts = _column(rows, args.prompt_field, args.prompts)[: args.max_prompts]
    reward = ModelReward(model_config=mc, reward_model=load_reward_model(args.reward)) if args.reward else None
    report = evaluate(models, reference=ref, tokenizer=tok, prompts=prompts, reward=reward,
                      config=EvalConfig(sampling=SamplingConfig(max_new_tokens=args.max_new_tokens,
                                                                temperature=args.temperature),
                                        samples_per_prompt=args.samples, seed=args.seed))
    os.makedirs(args.out, exist_ok=True)
    report.to_json(os.path.join(args.out, "eval.json"))
    report.to_markdown(os.path.join(args.out, "report.md"))
    report.plot(os.path.join(args.out, "eval.png"))
    print(report.table())
    for m in models[1:]:
        print(f"\nreference -> {m.name}\n" + format_comparison(compare(report, before="reference", after=m.name),
                                                              "reference", m.name))
    return 0


def add_evaluate_export(sub) -> None:
    p = sub.add_parser("evaluate", help="before/after evaluation on held-out prompts (report.md, JSON, PNG)")
    p.add_argument("--model", required=True, help="the reference (SFT) Hugging Face folder, with tokenizer")
    p.add_argument("--policy", action="append", default=[], help="an aligned model's HF folder (repeatable)")
    p.add_argument("--reward", help="reward model folder written by `rlhf-jax reward` (over --model's base)")
    p.add_argument("--prompts", required=True, help="JSONL/Parquet with a 'prompt' field")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompt-field", default="prompt", help="name of the prompt field (default: prompt)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion length (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="orbax training checkpoint -> Hugging Face folder or PEFT adapter")
    p.add_argument("--model", required=True, help="the base model's Hugging Face folder the run trained over")
    p.add_argument("--run", required=True, help="a run folder of `rlhf-jax sft|reward|ppo` (config.json + checkpoints/)")
    p.add_argument("--stage", required=True, choices=["sft", "reward", "ppo"], help="which trainer wrote the run")
    p.add_argument("--format", default="hf", choices=["hf", "peft"], help="merged HF folder or PEFT adapter")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.set_defaults(func=cmd_export)
