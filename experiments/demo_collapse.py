"""Why does the demo's KL run collapse? Re-run the reward-model and PPO stages of the demo with
other settings on the same world, SFT model and labels, and print the numbers the demo's claims
check (unique-completion ratio, on-topic rate and gold per family, toxicity, KL, reward-model
accuracy on train and held-out pairs).

    python experiments/demo_collapse.py --prepare runs/base     # once: the demo's world and SFT model
    python experiments/demo_collapse.py --from runs/base --out runs/collapse \\
        --variant '{"name": "kl 0.2", "kl_coef": 0.2}' --variant '{"name": "kl 0.5", "kl_coef": 0.5}'

A variant is a JSON object of :class:`rlhf_jax.demo.DemoConfig` fields (plus ``name``); each is
trained on the world, the SFT model (``export/sft``) and the labels of the ``--from`` folder (a
finished ``rlhf-jax demo`` run, or ``--prepare``'s: the demo's own world and SFT stages with its
default config; the labels are re-drawn from the SFT model with the demo's seed: the same records). One JSON line per
variant is appended to ``OUT/results.jsonl`` and a table row printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from rlhf_jax import toyworld as tw
from rlhf_jax.config_args import build_config
from rlhf_jax.demo import DemoConfig
from rlhf_jax.demo.pipeline import Stages, run_evaluation, run_feedback, run_negatives, run_ppo, run_reward, run_sft
from rlhf_jax.evaluate import compare
from rlhf_jax.model import load_pretrained


def numbers(report, rewards, ppo, seconds: float) -> dict:
    """The figures of one variant (see the module docstring)."""
    m = report.means()
    out = {"unique_sft": m["sft"]["unique_ratio"], "unique_ppo": m["ppo"]["unique_ratio"],
           "toxic_sft": m["sft"]["toxic_rate"], "toxic_ppo": m["ppo"]["toxic_rate"],
           "gold_sft": m["sft"]["gold"], "gold_ppo": m["ppo"]["gold"], "kl": m["ppo"]["kl"],
           "cross_prompt_ppo": m["ppo"]["cross_prompt_share"], "length_ppo": m["ppo"]["length"],
           "rm_heldout": [r.eval["eval_accuracy"] for r in rewards.results],
           "rm_train": [r.eval.get("train_accuracy") for r in rewards.results],
           "rm_steps": [r.best_step or len(r.history) for r in rewards.results],
           "ppo_last": {k: ppo.history[-1].get(k) for k in ("score", "kl", "gold", "overopt_gap")}, "seconds": seconds}
    for g in report.group_names:
        d = compare(report, before="sft", after="ppo", group=g)
        out[g] = {"on_topic": [d["on_topic"].before, d["on_topic"].after],
                  "gold": [d["gold"].before, d["gold"].after, d["gold"].diff.low, d["gold"].diff.high],
                  "unique": [d["unique_ratio"].before, d["unique_ratio"].after]}
    return out


def row(name: str, r: dict) -> str:
    fam = " ".join(f"{g[:4]} top {r[g]['on_topic'][0]:.2f}->{r[g]['on_topic'][1]:.2f} "
                   f"gold {r[g]['gold'][1] - r[g]['gold'][0]:+.2f}"
                   for g in tw.FAMILIES if g in r)
    return (f"{name}: unique {r['unique_sft']:.3f}->{r['unique_ppo']:.3f} (x{r['unique_ppo'] / r['unique_sft']:.2f}) "
            f"toxic x{r['toxic_ppo'] / max(r['toxic_sft'], 1e-9):.2f} gold {r['gold_sft']:+.2f}->{r['gold_ppo']:+.2f} "
            f"KL {r['kl']:.2f} len {r['length_ppo']:.1f} RM held-out {r['rm_heldout']} train {r['rm_train']} | {fam}")


def prepare(out: str) -> None:
    """The demo's world and SFT stages (default config) into ``out/world`` and ``out/export/sft``."""
    from rlhf_jax.export import save_hf_folder

    cfg, stages = DemoConfig(), Stages()
    world = tw.build_world(os.path.join(out, "world"), config=cfg.world)
    mc, sft = run_sft(cfg, world, out, stages, progress=False)
    save_hf_folder(os.path.join(out, "export", "sft"), mc, sft.params, tokenizer=world.tokenizer)
    stages.done("export", f"{out}/export/sft")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", metavar="DIR", help="only build the demo's world and SFT model into DIR")
    ap.add_argument("--from", dest="src", help="a finished demo run or --prepare folder (world, export/sft)")
    ap.add_argument("--out")
    ap.add_argument("--variant", action="append", help="JSON object of DemoConfig fields + name")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare(args.prepare)
    if not (args.src and args.out and args.variant):
        ap.error("--from, --out and at least one --variant are needed (or --prepare DIR)")
    os.makedirs(args.out, exist_ok=True)
    world = tw.load_world(os.path.join(args.src, "world"))
    mc, sft_params, _ = load_pretrained(os.path.join(args.src, "export", "sft"), tokenizer=False)
    for text in args.variant:
        spec = json.loads(text)
        name = spec.pop("name")
        cfg = build_config(DemoConfig, spec, base=DemoConfig())
        out = os.path.join(args.out, name.replace(" ", "_"))
        t0 = time.perf_counter()
        stages = Stages()
        samples, _, _, pairs, _, _ = run_feedback(cfg, world, mc, sft_params, out, stages)
        negatives, _ = run_negatives(cfg, pairs, out, stages)
        rewards = run_reward(cfg, world, mc, sft_params, pairs, samples, out, stages, progress=False, negatives=negatives)
        ppo = run_ppo(cfg, world, mc, sft_params, rewards, out, "ppo", kl_coef=cfg.kl_coef, steps=cfg.ppo_steps,
                      stages=stages, progress=False)
        report = run_evaluation(dataclasses.replace(cfg), world, mc, sft_params, rewards,
                                {"ppo": ppo.state.params["policy"]}, out, stages, progress=False)
        r = numbers(report, rewards, ppo, round(time.perf_counter() - t0, 1))
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps({"name": name, "config": spec, **r}, default=float) + "\n")
        print(row(name, r), flush=True)


if __name__ == "__main__":
    main()
