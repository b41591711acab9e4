"""``rlhf-jax demo``: the whole pipeline on the built-in toy world."""

from __future__ import annotations

import dataclasses
import json


def cmd_demo(args) -> int:
    from rlhf_jax.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    if args.config:
        from rlhf_jax.config_args import build_config

        with open(args.config) as f:
            cfg = build_config(DemoConfig, json.load(f), base=cfg)
    if args.grpo and not cfg.grpo_steps:
        cfg = dataclasses.replace(cfg, grpo_steps=cfg.ppo_steps)
    if args.dpo and not cfg.dpo_steps:
        cfg = dataclasses.replace(cfg, dpo_steps=cfg.reward_steps)
    run_demo(cfg, args.out, progress=not args.no_progress)
    return 0


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the built-in toy world and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a miniature of the pipeline (about a minute)")
    p.add_argument("--config", help="JSON file of DemoConfig values")
    p.add_argument("--grpo", action="store_true",
                   help="also train GRPO (the same reward model, KL coefficient, steps and episodes per step as "
                        "PPO) and compare it with PPO in the report")
    p.add_argument("--dpo", action="store_true",
                   help="also train DPO on the labelers' preference pairs (as many steps as the reward model, the "
                        "same pairs and held-out split) and compare it with PPO in the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
