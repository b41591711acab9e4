"""Re-run the demo's PPO, evaluation and report stages on a finished demo run's world, SFT model
and reward models, with other PPO settings (the KL coefficient...): the stages before PPO do not
depend on them, so the report is the one ``rlhf-jax demo`` would write with those settings, in a
third of its time (used for issue #18 on a loaded 2-core machine).

    rlhf-jax demo --out runs/demo                  # once
    python experiments/demo_finish.py --from runs/demo --out runs/demo_kl1 --part no_kl &   # in parallel:
    python experiments/demo_finish.py --from runs/demo --out runs/demo_kl1 --part finish \\
        --set '{"kl_coef": 1.0}'

``--part no_kl`` runs the no-KL PPO run (it does not depend on the KL coefficient) and saves its
policy adapter to ``OUT/ppo_no_kl/policy.pkl``; ``--part finish`` runs the KL run, waits for that
file, evaluates the three models and writes ``OUT/report.md``. The feedback stage is re-run (the
same records: seeded) for the report's labeler table; SFT and reward numbers come from the
``--from`` run's logs and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
import types

import jax

from rlhf_jax import toyworld as tw
from rlhf_jax.config_args import build_config
from rlhf_jax.demo import DemoConfig
from rlhf_jax.demo.claims import MONITOR, WINDOW
from rlhf_jax.demo.pipeline import RewardStage, Stages, run_evaluation, run_feedback, run_negatives, run_ppo
from rlhf_jax.demo.plots import plot_hacking, plot_overoptimisation
from rlhf_jax.demo.report import write_report
from rlhf_jax.model import load_pretrained
from rlhf_jax.scoring import load_reward_model


def load_rewards(src: str, cfg: DemoConfig) -> RewardStage:
    """The ``--from`` run's normalised reward models and their training results (from its logs)."""
    summary = json.load(open(os.path.join(src, "summary.json")))
    n = len(summary["reward_models"])
    models = [load_reward_model(os.path.join(src, "reward", *(("model",) if k == 0 else (f"member_{k}", "model"))))
              for k in range(n)]
    results = []
    for k, r in enumerate(summary["reward_models"]):
        hist = [json.loads(line) for line in open(os.path.join(src, "reward", f"member_{k}", "metrics.jsonl"))]
        ev = {key: r[key] for key in ("eval_accuracy", "eval_loss", "train_accuracy", "train_loss") if key in r}
        results.append(types.SimpleNamespace(eval=ev, best_step=r["best_step"], history=hist))
    return RewardStage(models[:cfg.reward_members], models[cfg.reward_members:], results)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--part", choices=("no_kl", "finish"), required=True)
    ap.add_argument("--set", default="{}", help="JSON object of DemoConfig fields changed from the --from run's")
    args = ap.parse_args(argv)
    src_cfg = json.load(open(os.path.join(args.src, "summary.json")))["config"]
    nested = ("world", "reward_lora", "policy_lora")  # the demo's defaults (not changed by --set here)
    base = build_config(DemoConfig, {k: v for k, v in src_cfg.items() if k not in nested}, base=DemoConfig())
    cfg = build_config(DemoConfig, json.loads(args.set), base=base)
    os.makedirs(args.out, exist_ok=True)
    world = tw.load_world(os.path.join(args.src, "world"))
    mc, sft_params, _ = load_pretrained(os.path.join(args.src, "export", "sft"), tokenizer=False)
    rewards = load_rewards(args.src, cfg)
    stages = Stages()
    no_kl_path = os.path.join(args.out, "ppo_no_kl", "policy.pkl")
    if args.part == "no_kl":
        hack = run_ppo(cfg, world, mc, sft_params, rewards, args.out, "ppo_no_kl", kl_coef=0.0, steps=cfg.hacking_steps,
                       stages=stages, progress=False, clip=False)
        with open(no_kl_path + ".tmp", "wb") as f:
            pickle.dump((jax.device_get(hack.state.params["policy"]), hack.history), f)
        os.replace(no_kl_path + ".tmp", no_kl_path)
        return
    _, _, stats, pairs, pairs_report, val_report = run_feedback(cfg, world, mc, sft_params, args.out, stages)
    _, negatives = run_negatives(cfg, pairs, args.out, stages)
    ppo = run_ppo(cfg, world, mc, sft_params, rewards, args.out, "ppo", kl_coef=cfg.kl_coef, steps=cfg.ppo_steps,
                  stages=stages, progress=False)
    while not os.path.exists(no_kl_path):
        time.sleep(10)
    with open(no_kl_path, "rb") as f:
        hack_policy, hack_history = pickle.load(f)
    hack = types.SimpleNamespace(history=hack_history)
    runs = {"ppo (KL %.2g)" % cfg.kl_coef: ppo.history, "ppo_no_kl (KL 0)": hack.history}
    plot_hacking(runs, os.path.join(args.out, "reward_hacking.png"))
    if rewards.held_out:
        plot_overoptimisation(runs, os.path.join(args.out, "overoptimisation.png"), key=MONITOR,
                              threshold=cfg.gap_threshold, window=WINDOW)
    report = run_evaluation(cfg, world, mc, sft_params, rewards,
                            {"ppo": ppo.state.params["policy"], "ppo_no_kl": hack_policy}, args.out, stages, False)
    sft_hist = [json.loads(line) for line in open(os.path.join(args.src, "sft", "metrics.jsonl"))]
    src_summary = json.load(open(os.path.join(args.src, "summary.json")))
    sft = types.SimpleNamespace(history=sft_hist, eval={k: v for k, v in src_summary["sft"].items()
                                                        if k != "final_loss"})
    stages.durations = {**{k: src_summary["stages_seconds"][k] for k in ("world", "sft", "reward")},
                        **stages.durations}
    write_report(args.out, cfg=cfg, stages=stages, sft=sft, stats=stats, pairs_report=pairs_report,
                 validation=val_report, rewards=rewards, ppo=ppo, hack=hack, report=report, negatives=negatives)
    stages.done("report", f"{args.out}/report.md")


if __name__ == "__main__":
    main()
