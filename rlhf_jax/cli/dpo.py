"""``rlhf-jax dpo``: DPO / IPO / cDPO on preference pairs, driven by :class:`rlhf_jax.train.DPOConfig`
(every field a flag, ``--config FILE.json`` under the flags), the policy saved as the other
stages save theirs."""

from __future__ import annotations

import os

from rlhf_jax.cli.common import add_model_flags, with_run, write_config
from rlhf_jax.config_args import add_config_flags, config_from_args


def cmd_dpo(args) -> int:
    from rlhf_jax.cli.train import save_policy
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.train import DPOConfig, train_dpo
    from rlhf_jax.train.dpo import check_dpo_lengths

    cfg = with_run(config_from_args(DPOConfig, args, config_file=args.config), args)
    data = args.data or args.pairs
    if not data:
        raise ValueError("dpo: give the preference pairs with --data FILE (or --pairs FILE)")
    if not os.path.exists(data):
        raise FileNotFoundError(f"{data}: no such file or folder (--data)")
    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    check_dpo_lengths(mc, cfg)  # before anything is written
    write_config(args.out, cfg)
    res = train_dpo(mc, base, tok, data, cfg)
    saved = save_policy(args.out, mc, base, res.policy, tok)
    last = res.history[-1]
    held = ", ".join(f"{k} {v:.3f}" for k, v in res.eval.items()) or "no held-out pairs"
    print(f"dpo ({cfg.loss}, reference {cfg.reference}): {len(res.history)} steps, final loss {last['loss']:.4f}, "
          f"accuracy {last['accuracy']:.3f}; held-out: {held}; {res.report.summary()}; policy -> {saved}")
    return 0


def add_dpo_command(sub) -> None:
    from rlhf_jax.train import DPOConfig

    p = sub.add_parser("dpo", help="DPO / IPO / cDPO on preference pairs: a policy LoRA on the frozen base, which is "
                                   "the reference (--lora.off: full fine-tuning, a second full copy)")
    add_model_flags(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="preference pairs: JSONL/JSON/Parquet or a save_to_disk folder, any TRL preference "
                                    "format (prompt/chosen/rejected or implicit chosen/rejected; text or messages)")
    src.add_argument("--pairs", help="the same as --data (the name the reward command uses)")
    add_config_flags(p, DPOConfig)
    p.set_defaults(func=cmd_dpo)
