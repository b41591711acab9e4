"""``rlhf-jax evaluate``: before/after evaluation of Hugging Face folders on held-out prompts."""

from __future__ import annotations

import os

from rlhf_jax.cli.common import add_data_flags, add_reward_flags, data_config, load_data, load_model, stop_ids


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
    from rlhf_jax.data import encode_prompt_data
    from rlhf_jax.evaluate import EvalConfig, ModelSpec, compare, evaluate, format_comparison
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.scoring import build_scorer

    mc, base, tok = load_model(args)
    ref = ModelSpec("reference", mc, base)
    models = [ref]
    for spec in args.policy:
        name, folder = parse_policy(spec)
        pmc, pparams, _ = load_pretrained(folder, dtype=args.dtype, tokenizer=False)
        if pmc.vocab_size != mc.vocab_size:
            raise ValueError(f"{folder} has vocab {pmc.vocab_size}, the reference {mc.vocab_size}: they do not share "
                             "a tokenizer")
        models.append(ModelSpec(name, pmc, None, pparams))
    data = load_data(args, "prompts", field=args.prompt_field)
    encoded, read = encode_prompt_data(data, tok, data_config=data_config(args))
    prompts = encoded.texts[: args.max_prompts]  # conversations rendered with the generation prompt
    reward = None
    if args.reward or args.reward_fn:
        reward = build_scorer(args.reward, args.reward_fn, model_config=mc, base=base, tokenizer=tok, dtype=args.dtype)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              eos_ids=stop_ids(args, tok, mc, read))
    print(f"evaluate: {read.summary()}; {len(prompts)} prompts; stop tokens {list(sampling.eos_ids)}")
    report = evaluate(models, reference=ref, tokenizer=tok, prompts=prompts, reward=reward,
                      config=EvalConfig(sampling=sampling, samples_per_prompt=args.samples, seed=args.seed))
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
    add_reward_flags(p, required=False)
    p.add_argument("--prompts", required=True,
                   help="prompt-only, prompt-completion or preference rows (their prompts), strings or message lists "
                        "(rendered with the chat template): .jsonl, .json, .parquet or a save_to_disk folder")
    add_data_flags(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompt-field", default="prompt", help="name of the prompt field (default: prompt)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion length (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.set_defaults(func=cmd_evaluate)
