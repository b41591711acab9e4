"""``rlhf-jax evaluate``: before/after evaluation of Hugging Face folders on held-out prompts."""

from __future__ import annotations

import os

from rlhf_jax.cli.common import column, read_rows


def parse_policy(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; a bare ``PATH`` is named after its last folder."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = os.path.basename(os.path.normpath(spec))
    if not name or not path:
        raise ValueError(f"--policy {spec!r}: expected NAME=PATH (or a folder path)")
    return name, path


def cmd_evaluate(args) -> int:
    from rlhf_jax.evaluate import EvalConfig, ModelSpec, compare, evaluate, format_comparison
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.scoring import ModelScorer, load_reward_model

    mc, base, tok = load_pretrained(args.model, dtype=args.dtype)
    ref = ModelSpec("reference", mc, base)
    models = [ref]
    for spec in args.policy:
        name, folder = parse_policy(spec)
        pmc, pparams, _ = load_pretrained(folder, dtype=args.dtype, tokenizer=False)
        if pmc.vocab_size != mc.vocab_size:
            raise ValueError(f"{folder} has vocab {pmc.vocab_size}, the reference {mc.vocab_size}: they do not share "
                             "a tokenizer")
        models.append(ModelSpec(name, pmc, None, pparams))
    rows = read_rows(args.prompts)
    prompts = column(rows, args.prompt_field, args.prompts)[: args.max_prompts]
    reward = ModelScorer(mc, load_reward_model(args.reward)) if args.reward else None
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


def add_evaluate_command(sub) -> None:
    p = sub.add_parser("evaluate", help="before/after evaluation on held-out prompts (report.md, JSON, PNG)")
    p.add_argument("--model", required=True, help="the reference (SFT) Hugging Face folder, with tokenizer")
    p.add_argument("--policy", action="append", default=[], metavar="NAME=PATH",
                   help="an aligned model's HF folder, named NAME in the report (repeatable; a bare PATH is named "
                        "after its folder)")
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
