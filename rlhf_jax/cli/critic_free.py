"""``rlhf-jax grpo | rloo | reinforce-pp``: critic-free RL on prompts, with a reward model, Python
reward functions (verifiers) or a weighted sum of them; every config field a flag, as the other
stages."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from rlhf_jax.cli.common import add_model_flags, column, read_rows, with_run, write_config
from rlhf_jax.config_args import add_config_flags, config_from_args


def load_function(spec: str):
    """``module:function`` or ``path/to/file.py:function`` -> the function (errors name the spec)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"--reward-fn {spec!r}: expected module:function or file.py:function")
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise FileNotFoundError(f"--reward-fn {spec!r}: no file {where}")
        mod_name = "rlhf_jax_reward_" + os.path.splitext(os.path.basename(where))[0]
        loader = importlib.util.spec_from_file_location(mod_name, where)
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"--reward-fn {spec!r}: cannot import {where} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--reward-fn {spec!r}: {where} has no function {name!r}")
    return fn


def build_reward(args, model_config, rows: list[dict], prompts: list[str]):
    """The scorer the flags describe: the reward model, each ``--reward-fn``, the exact-match
    verifier of ``--answer-field``, weighted by ``--reward-weights`` (in that order)."""
    from rlhf_jax.scoring import FunctionScorer, ModelScorer, WeightedScorer, exact_match, load_reward_model

    scorers = []
    if args.reward:
        scorers.append(ModelScorer(model_config, load_reward_model(args.reward), name="reward_model"))
    for spec in args.reward_fn or []:
        scorers.append(FunctionScorer(load_function(spec), name=spec.rpartition(":")[2]))
    if args.answer_field:
        answers = dict(zip(prompts, column(rows, args.answer_field, args.prompts)))
        scorers.append(FunctionScorer(exact_match(answers)))
    if not scorers:
        raise ValueError("no reward: give --reward (a reward model folder), --reward-fn module:function "
                         "and/or --answer-field")
    weights = [1.0] * len(scorers)
    if args.reward_weights:
        try:
            weights = [float(w) for w in args.reward_weights.split(",")]
        except ValueError:
            raise ValueError(f"--reward-weights {args.reward_weights!r}: expected numbers separated by commas") \
                from None
        if len(weights) != len(scorers):
            raise ValueError(f"--reward-weights has {len(weights)} weights for {len(scorers)} rewards "
                             f"({', '.join(s.name for s in scorers)}, in that order)")
    if len(scorers) == 1 and weights[0] == 1.0:
        return scorers[0]
    return WeightedScorer(list(zip(scorers, weights)))


def _cmd(config_cls, train_name: str):
    def run(args) -> int:
        from rlhf_jax.cli.train import save_policy
        from rlhf_jax.model import load_pretrained
        from rlhf_jax.train import train_critic_free

        cfg = with_run(config_from_args(config_cls, args, config_file=args.config), args)
        rows = read_rows(args.prompts)
        prompts = column(rows, args.prompt_field, args.prompts)
        mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
        reward = build_reward(args, mc, rows, prompts)
        write_config(args.out, cfg)
        res = train_critic_free(mc, base, tok, prompts, reward, cfg)
        saved = save_policy(args.out, mc, base, res.state.params, tok)
        last = res.history[-1]
        kl = f", KL {last['kl']:.3f}" if "kl" in last else ""
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
        p.add_argument("--prompts", required=True, help="JSONL/Parquet with a prompt field (texts)")
        p.add_argument("--prompt-field", "--prompt_field", dest="prompt_field", default="prompt",
                       help="name of the prompt field")
        p.add_argument("--reward", help="reward model folder written by `rlhf-jax reward`")
        p.add_argument("--reward-fn", "--reward_fn", dest="reward_fn", action="append", metavar="MODULE:FUNCTION",
                       help="a Python reward fn(prompts, completions) -> floats, as module:function or "
                            "file.py:function (repeatable)")
        p.add_argument("--answer-field", "--answer_field", dest="answer_field",
                       help="a field of the prompts file holding each prompt's reference answer: adds the "
                            "exact-match verifier (rlhf_jax.scoring.exact_match)")
        p.add_argument("--reward-weights", "--reward_weights", dest="reward_weights", metavar="W1,W2,...",
                       help="one weight per reward, in the order --reward, --reward-fn..., --answer-field "
                            "(default: all 1)")
        add_config_flags(p, cls)
        p.set_defaults(func=_cmd(cls, name))
