"""``rlhf-jax grpo | rloo | reinforce-pp``: critic-free RL on prompts, with the same data, reward and
output conventions as ``rlhf-jax ppo``: prompts in any prompt-bearing format (conversations through
the chat template), ``--reward`` (our reward folder or a Hugging Face sequence classifier) and/or
``--reward_fn module:function[:weight]``, plus the exact-match verifier of an answer field; every
config field a flag."""

from __future__ import annotations

import json
import os

from rlhf_jax.cli.common import (add_data_flags, add_model_flags, add_reward_flags, chat_template_of, data_config,
                                 load_data, load_model, prompt_rows, with_run, write_config)
from rlhf_jax.config_args import add_config_flags, config_from_args


def answer_scorer(args, rows):
    """The exact-match verifier of ``--answer-field`` (``None`` without it): each prompt's answer
    from that field of the prompts file, errors naming the row."""
    from rlhf_jax.data import DataError
    from rlhf_jax.scoring import FunctionScorer, exact_match

    if not args.answer_field:
        return None
    answers = {}
    for i, row in enumerate(rows):
        if row.get(args.answer_field) is None:
            raise DataError(f"{rows.where(i)}: no field {args.answer_field!r} (--answer-field {args.answer_field})")
        prompt = row.get(args.prompt_field)
        if not isinstance(prompt, str):
            raise DataError(f"{rows.where(i)}: --answer-field needs text prompts (the {args.prompt_field!r} field is "
                            f"{type(prompt).__name__})")
        answers[prompt] = row[args.answer_field]
    return FunctionScorer(exact_match(answers))


def build_critic_free_reward(args, model_config, base, tokenizer, rows):
    """The scorer the flags describe: ``--reward`` and each ``--reward_fn`` (as ``rlhf-jax ppo``),
    then ``--answer-field`` weighted by ``--answer-weight``; one part of weight 1 is used as is."""
    from rlhf_jax.scoring import WeightedScorer, build_scorer

    exact = answer_scorer(args, rows)
    if exact is None:
        return build_scorer(args.reward, args.reward_fn, model_config=model_config, base=base, tokenizer=tokenizer,
                            dtype=args.dtype)
    parts = []
    if args.reward or args.reward_fn:
        main = build_scorer(args.reward, args.reward_fn, model_config=model_config, base=base, tokenizer=tokenizer,
                            dtype=args.dtype)
        parts = list(main.items) if isinstance(main, WeightedScorer) else [(main, 1.0)]
    parts.append((exact, args.answer_weight))
    if len(parts) == 1 and parts[0][1] == 1.0:
        return exact
    return WeightedScorer(parts)


def _cmd(config_cls, train_name: str):
    def run(args) -> int:
        from rlhf_jax.cli.train import GENERATION, policy_generation_config, save_policy
        from rlhf_jax.train import train_critic_free

        cfg = with_run(config_from_args(config_cls, args, config_file=args.config), args)
        raw = load_data(args, "prompts")
        data = prompt_rows(raw, args.prompt_field)  # the file read once; the answers stay in ``raw``
        mc, base, tok = load_model(args)
        reward = build_critic_free_reward(args, mc, base, tok, raw)
        write_config(args.out, cfg)
        res = train_critic_free(mc, base, tok, data, reward, cfg, data_config=data_config(args))
        gen = policy_generation_config(mc, tok, res.sampling, chat_template_of(tok, args))
        with open(os.path.join(args.out, GENERATION), "w") as f:
            json.dump(gen, f, indent=2)
        saved = save_policy(args.out, mc, base, res.state.params, tok, gen)
        last = res.history[-1]
        kl = f", KL {last['kl']:.3f}" if "kl" in last else ""
        print(f"{train_name}: {res.report.summary()}; stop tokens {list(res.sampling.eos_ids)}")
        print(f"{train_name}: stopped at {res.stop_reason} after {len(res.history)} steps; score {last['score']:.3f}"
              f"{kl}; policy -> {saved}")
        return 0

    return run


def add_critic_free_commands(sub) -> None:
    from rlhf_jax.train import GRPOConfig, ReinforcePPConfig, RLOOConfig

    helps = {
        "grpo": (GRPOConfig, "GRPO: G samples per prompt, group-normalised advantages, KL to the base as a loss term"),
        "rloo": (RLOOConfig, "RLOO: K samples per prompt, leave-one-out baseline, KL in the reward"),
        "reinforce-pp": (ReinforcePPConfig, "REINFORCE++: KL per token in the reward, batch-whitened advantages"),
    }
    for name, (cls, text) in helps.items():
        p = sub.add_parser(name, help=text + " (policy LoRA on the frozen base; --policy_lora.off: full)")
        add_model_flags(p)
        add_reward_flags(p, required=True)
        p.add_argument("--prompts", required=True,
                       help="prompt-only, prompt-completion or preference rows (their prompts), strings or message "
                            "lists (rendered with the chat template; generation then stops at its end of turn "
                            "too): .jsonl, .json, .parquet or a save_to_disk folder")
        p.add_argument("--prompt-field", "--prompt_field", dest="prompt_field", default="prompt",
                       help="name of the prompt field (default: prompt)")
        p.add_argument("--answer-field", "--answer_field", dest="answer_field",
                       help="a field of the prompts file holding each (text) prompt's reference answer: adds the "
                            "exact-match verifier (rlhf_jax.scoring.exact_match) to the reward")
        p.add_argument("--answer-weight", "--answer_weight", dest="answer_weight", type=float, default=1.0,
                       help="the exact-match verifier's weight in the reward (default 1)")
        add_data_flags(p)
        add_config_flags(p, cls)
        p.set_defaults(func=_cmd(cls, name))
