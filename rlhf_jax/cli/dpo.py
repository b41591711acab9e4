"""``rlhf-jax dpo``: DPO / IPO / cDPO on preference pairs, driven by :class:`rlhf_jax.train.DPOConfig`
(every field a flag, ``--config FILE.json`` under the flags), the dataset read as the other stages
read theirs (``--format``, ``--split``, ``--chat_template``), the policy saved as PPO saves its."""

from __future__ import annotations

import os

from rlhf_jax.cli.common import (add_data_flags, add_model_flags, data_config, load_data, load_model, with_run,
                                 write_config)
from rlhf_jax.config_args import add_config_flags, config_from_args


def cmd_dpo(args) -> int:
    from rlhf_jax.cli.train import save_policy
    from rlhf_jax.train import DPOConfig, train_dpo
    from rlhf_jax.train.dpo import check_dpo_lengths

    cfg = with_run(config_from_args(DPOConfig, args, config_file=args.config), args)
    attr = "data" if args.data else "pairs"
    path = getattr(args, attr)
    if not path:
        raise ValueError("dpo: give the preference pairs with --data FILE (or --pairs FILE)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder (--{attr})")
    data = load_data(args, attr)
    mc, base, tok = load_model(args)
    check_dpo_lengths(mc, cfg)  # before anything is written
    write_config(args.out, cfg)
    res = train_dpo(mc, base, tok, data, cfg, data_config=data_config(args))
    saved = save_policy(args.out, mc, base, res.policy, tok)
    last = res.history[-1]
    held = ", ".join(f"{k} {v:.3f}" for k, v in res.eval.items()) or "no held-out pairs"
    print(f"dpo: {res.report.summary()}")
    print(f"dpo ({cfg.loss}, reference {cfg.reference}): {len(res.history)} steps, final loss {last['loss']:.4f}, "
          f"accuracy {last['accuracy']:.3f}; held-out: {held}; policy -> {saved}")
    return 0


def add_dpo_command(sub) -> None:
    from rlhf_jax.train import DPOConfig

    p = sub.add_parser("dpo", help="DPO / IPO / cDPO on preference pairs: a policy LoRA on the frozen base, which is "
                                   "the reference (--lora.off: full fine-tuning, a second full copy)")
    add_model_flags(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="preference rows (prompt, chosen, rejected) or implicit (chosen, rejected), "
                                    "strings or message lists: .jsonl, .json, .parquet or a save_to_disk folder")
    src.add_argument("--pairs", help="the same as --data (the name the reward command uses)")
    add_data_flags(p)
    add_config_flags(p, DPOConfig)
    p.set_defaults(func=cmd_dpo)
