"""The ``rlhf-jax`` command: the demo, one subcommand per stage, and ``feedback``.

Each stage is driven by the same frozen configs as the Python API: every config field is a flag
(``--optim.learning_rate 1e-4``), ``--config FILE.json`` gives values the flags override, and the
config used is written next to the results (``config.json``). Models and tokenizers are local
Hugging Face folders; data is JSONL or Parquet. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from rlhf_jax.config_args import add_config_flags, config_from_args, config_to_dict


def _read_rows(path: str) -> list[dict]:
    """Rows of a JSONL, JSON-list or Parquet file."""
    if not os.path.exists(path):
        raise SystemExit(f"error: {path}: no such file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"error: {path}:{n}: bad JSON ({e.msg})") from e
    return rows


def _column(rows: list[dict], name: str, path: str) -> list[str]:
    missing = [i + 1 for i, r in enumerate(rows) if not isinstance(r.get(name), str)]
    if missing:
        raise SystemExit(f"error: {path}: rows {missing[:10]} have no string field {name!r}")
    return [r[name] for r in rows]


def _write_config(out: str, config) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_to_dict(config), f, indent=2)


def _run(config, args):
    """The config with ``run.out_dir`` from ``--out`` and ``run.mesh`` from ``--mesh``."""
    import dataclasses

    run = dataclasses.replace(config.run, out_dir=args.out)
    if getattr(args, "mesh", None):
        from rlhf_jax.sharding import MeshConfig

        run = dataclasses.replace(run, mesh=MeshConfig.from_string(args.mesh))
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()  # before any device use; auto-detected on TPU pods, SLURM, MPI
    return dataclasses.replace(config, run=run)


def cmd_demo(args) -> int:
    from rlhf_jax.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    if args.config:
        from rlhf_jax.config_args import build_config

        with open(args.config) as f:
            cfg = build_config(DemoConfig, json.load(f), base=cfg)
    run_demo(cfg, args.out, progress=not args.no_progress)
    return 0


def cmd_sft(args) -> int:
    from rlhf_jax.export import save_hf_folder
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.train import SFTConfig, train_sft

    cfg = _run(config_from_args(SFTConfig, args, config_file=args.config), args)
    rows = _read_rows(args.data)
    mc, params, tok = load_pretrained(args.model, dtype=args.dtype)
    res = train_sft(mc, params, tok, _column(rows, "prompt", args.data), _column(rows, "completion", args.data), cfg)
    _write_config(args.out, cfg)
    save_hf_folder(os.path.join(args.out, "model"), mc, res.params, tokenizer=tok)
    print(f"sft: {len(res.history)} steps, final loss {res.history[-1]['loss']:.4f}, {res.eval}; "
          f"{res.skipped_examples} examples skipped (too long); model -> {args.out}/model")
    return 0


def cmd_reward(args) -> int:
    import jax
    import numpy as np

    from rlhf_jax.feedback import BatchConfig, encode_sequences, load_pairs
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.rollout import Sampler, SamplingConfig, sample_texts
    from rlhf_jax.model import Transformer
    from rlhf_jax.train import RewardConfig, normalize_reward_model, raw_scores, save_reward_model, train_reward_model

    cfg = _run(config_from_args(RewardConfig, args, config_file=args.config), args)
    pairs = load_pairs(args.pairs)
    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    res = train_reward_model(mc, base, tok, pairs, cfg)
    rm = res.reward_model
    if args.normalize_samples > 0:  # mean 0 / std 1 on the SFT model's own samples
        prompts = sorted(set(pairs["prompt"]))[: args.normalize_samples]
        sampler = Sampler(Transformer(mc), SamplingConfig(max_new_tokens=args.max_new_tokens))
        texts = sample_texts(sampler, {"params": base}, tok, prompts, seed=cfg.run.seed)
        batch, _ = encode_sequences(tok, prompts, [t[0] for t in texts], config=BatchConfig(max_length=cfg.max_length))
        score = jax.jit(lambda p, i, m: raw_scores(mc, cfg.lora, base if cfg.lora else None, p, i, m))
        raw = np.asarray(score(rm.params, batch.input_ids, batch.attention_mask))
        rm = normalize_reward_model(rm, raw)
    _write_config(args.out, cfg)
    save_reward_model(os.path.join(args.out, "reward_model"), rm)
    print(f"reward: held-out {res.eval}; {res.report.skipped} pairs skipped; model -> {args.out}/reward_model")
    return 0


def cmd_ppo(args) -> int:
    from rlhf_jax.export import save_hf_folder, save_peft_adapter
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.train import ModelReward, PPOConfig, PPOTrainer, load_reward_model

    cfg = _run(config_from_args(PPOConfig, args, config_file=args.config), args)
    rows = _read_rows(args.prompts)
    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    rm = load_reward_model(args.reward)
    trainer = PPOTrainer(mc, base, tok, _column(rows, args.prompt_field, args.prompts), ModelReward(model_config=mc, reward_model=rm), cfg)
    res = trainer.train()
    _write_config(args.out, cfg)
    policy = res.state.params["policy"]
    if cfg.policy_lora is None:  # full fine-tuning: the state holds the whole policy, there is no adapter
        save_hf_folder(os.path.join(args.out, "policy"), mc, policy, tokenizer=tok)
        saved = f"{args.out}/policy (full); PEFT adapter skipped: the policy is fully fine-tuned"
    else:
        save_peft_adapter(os.path.join(args.out, "policy_adapter"), mc, policy, cfg.policy_lora)
        save_hf_folder(os.path.join(args.out, "policy"), mc, base, tokenizer=tok, lora=policy,
                       lora_config=cfg.policy_lora)
        saved = f"{args.out}/policy (merged) and {args.out}/policy_adapter (PEFT)"
    last = res.history[-1]
    print(f"ppo: stopped at {res.stop_reason} after {len(res.history)} steps; score {last['score']:.3f}, KL "
          f"{last['kl']:.3f}; policy -> {saved}")
    return 0


def _add_common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Hugging Face folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument("--config", help="JSON file of config values (flags override it)")
    p.add_argument("--mesh", help="device mesh, e.g. data=2,fsdp=2,tensor=2 (-1 fills one axis); default one device")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host on a pod)")


def build_parser() -> argparse.ArgumentParser:
    from rlhf_jax.feedback.cli import add_feedback_subcommands
    from rlhf_jax.train import PPOConfig, RewardConfig, SFTConfig

    parser = argparse.ArgumentParser(prog="rlhf-jax", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the built-in toy world and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a miniature of the pipeline (about a minute)")
    p.add_argument("--config", help="JSON file of DemoConfig values")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion JSONL; writes the RLHF base")
    _add_common_model(p)
    p.add_argument("--data", required=True, help="JSONL/Parquet with 'prompt' and 'completion' fields")
    add_config_flags(p, SFTConfig)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("reward", help="train a reward model (base + LoRA + score head) on preference pairs")
    _add_common_model(p)
    p.add_argument("--pairs", required=True, help="pairs JSONL/Parquet (prompt, chosen, rejected[, margin])")
    p.add_argument("--normalize-samples", type=int, default=256,
                   help="normalise scores to mean 0 / std 1 on the base model's samples for this many prompts (0: off)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of those samples")
    add_config_flags(p, RewardConfig)
    p.set_defaults(func=cmd_reward)

    p = sub.add_parser("ppo", help="PPO with a KL penalty: policy and critic LoRA on the frozen base "
                                   "(--policy_lora.off / --critic_lora.off: full fine-tuning)")
    _add_common_model(p)
    p.add_argument("--reward", required=True, help="reward model folder written by `rlhf-jax reward`")
    p.add_argument("--prompts", required=True, help="JSONL/Parquet with a 'prompt' field")
    p.add_argument("--prompt-field", default="prompt", help="name of the prompt field (default: prompt)")
    add_config_flags(p, PPOConfig)
    p.set_defaults(func=cmd_ppo)

    add_feedback_subcommands(sub)
    __import__("rlhf_jax.label.cli", fromlist=["cli"]).add_label_subcommands(sub)  # rlhf-jax label ...
    _add_late_commands(sub)
    return parser


def _add_late_commands(sub) -> None:
    """``evaluate`` and ``export`` (defined in :mod:`rlhf_jax.cli_eval_export`)."""
    from rlhf_jax.cli_eval_export import add_evaluate_export

    add_evaluate_export(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
