"""The demo's report: what each stage measured, and the claims (:mod:`rlhf_jax.demo.claims`)
checked against the numbers.

``rlhf-jax demo --quick`` (:meth:`DemoConfig.quick`, 16 prompts, 3 + 3 PPO steps) shows that the
stages connect; its report says so in its header and checks none of the claims.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import numpy as np

from rlhf_jax.demo.claims import (MIN_EVAL_PROMPTS, MIN_HACKING_STEPS, MIN_PPO_STEPS, MONITOR, NOT_CHECKED, Claim,
                                  claims, monitor_timing, run_sizes)
from rlhf_jax.demo.config import DemoConfig
from rlhf_jax.evaluate import compare, format_comparison

MAIN_METRICS = ("reward", "gold", "on_topic", "toxicity", "toxic_rate", "hype", "repetition", "kl", "length")
"""The metrics of the per-family table, those present in the evaluation, in this order."""


def without_extra_runs(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` without the optional GRPO and DPO runs (what ``--quick`` or the defaults are compared with)."""
    return dataclasses.replace(cfg, grpo_steps=0, dpo_steps=0)


def extra_run_flags(cfg: DemoConfig) -> str | None:
    """The command-line flags that add ``cfg``'s GRPO / DPO runs (``""`` for none), or ``None``
    when their step counts are not the ones the flags set."""
    parts = []
    for flag, steps, default in (("--grpo", cfg.grpo_steps, cfg.ppo_steps), ("--dpo", cfg.dpo_steps, cfg.reward_steps)):
        if steps:
            if steps != default:
                return None
            parts.append(" " + flag)
    return "".join(parts)


def header(cfg, out: str, checked: list[Claim], seconds: float) -> list[str]:
    """Title, how the run was made, and for the miniature (or any run too small for some
    claims) what that means."""
    plain = without_extra_runs(cfg)  # --grpo / --dpo: the same demo plus a GRPO / DPO run
    flags = extra_run_flags(cfg)
    quick = plain == DemoConfig.quick() and flags is not None
    command = (f"`rlhf-jax demo --quick{flags} --out {out}`" if quick else f"`rlhf-jax demo{flags} --out {out}`"
               if plain == DemoConfig() and flags is not None else
               f"`rlhf-jax demo --out {out}` with a custom configuration (`summary.json`)")
    lines = ["# rlhf_jax demo: RLHF on the built-in toy world" + (" (miniature)" if quick else ""), ""]
    unchecked = [c for c in checked if not c.checked]
    if quick:
        s = checked[0].sizes if checked else {}
        lines += [
            f"**This is the miniature (`--quick`)**: every stage runs at toy sizes ({s.get('held-out prompts')} "
            f"held-out prompts x {cfg.eval_samples} samples, {cfg.sft_steps} SFT steps, {cfg.reward_steps} reward "
            f"steps, {s.get('PPO steps')} + {s.get('no-KL PPO steps')} PPO steps) to show that the pipeline connects "
            "end to end. Its numbers are too few to show what RLHF does: the claims that need a bigger run are marked "
            f"*{NOT_CHECKED}*. Run `rlhf-jax demo` for the full-size run.", ""]
    elif unchecked:
        lines += [f"{len(unchecked)} of {len(checked)} claims need a bigger run than this one and are marked "
                  f"*{NOT_CHECKED}*.", ""]
    lines += [f"Produced by {command} on {platform.machine()} with {os.cpu_count()} CPU cores (JAX CPU), in "
              f"{seconds:.0f} s. Every number below was measured in this run.", ""]
    return lines


def claims_section(checked: list[Claim]) -> list[str]:
    """The claims table; the sizes a claim needs are given where the run fell short."""
    rows = [f"| {c.claim} | {c.result} | {c.measured}" + (f" ({c.shortfall()})" if not c.checked else "") + " |"
            for c in checked]
    return ["## Claims", "", "| claim | result | measured |", "|---|---|---|", *rows, ""]


def _differences(report, before: str, after: str, metrics: list[str]) -> str:
    """Markdown: a row per group, ``after - before`` with its paired interval per metric."""
    lines = ["| family | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for g in report.group_names:
        d = compare(report, before=before, after=after, group=g)
        cells = [f"{d[k].diff.mean:+.3f}" + ("" if np.isnan(d[k].diff.low) else
                                             f" [{d[k].diff.low:+.3f}, {d[k].diff.high:+.3f}]") for k in metrics]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_section(report, *, before: str = "sft", after: str = "ppo", examples: int = 3) -> list[str]:
    """Per prompt family: the main metrics, the collapse diagnostics, the paired ``after -
    before`` differences, and examples. Says so in one line when the evaluation has no groups."""
    lines = ["## By prompt family", ""]
    if not report.by_group:
        return lines + ["This evaluation has no prompt groups (evaluate with `groups=rlhf_jax.toyworld.prompt_family` "
                        "for this section).", ""]
    main = [k for k in MAIN_METRICS if k in report.metrics]
    lines += [f"{len(report.group_names)} families; every statistic over the family's prompts alone, with its "
              "prompt-clustered 95% interval.", "", "### Main metrics", "", report.group_table(main), ""]
    if report.corpus_metrics:
        lines += ["### Diversity and collapse", "", report.group_table(report.corpus_metrics), ""]
    if before in report.models and after in report.models:
        cols = main + [k for k in ("unique_ratio", "cross_prompt_share") if k in report.metrics]
        lines += [f"### {before} -> {after} per family", "",
                  "Paired by prompt (the same prompts for both models).", "",
                  _differences(report, before, after, cols), ""]
    lines += ["### Examples per family", "", f"First sample of each model on the first {examples} prompts of each "
              "family.", "", report.group_examples(examples, level=4), ""]
    return lines


def evaluation_section(report) -> list[str]:
    """The before/after tables, the paired comparisons and examples."""
    lines = ["## Before / after on held-out prompts", "", report.table(report.sample_metrics), ""]
    if report.corpus_metrics:
        lines += ["Diversity and collapse (whole completions compared as strings; entropy in bits):", "",
                  report.table(report.corpus_metrics), ""]
    lines += ["![eval](eval/eval.png)", "",
              "### SFT -> PPO (KL)", "",
              format_comparison(compare(report, before="sft", after="ppo"), "sft", "ppo"), "",
              "### SFT -> PPO without KL", "",
              format_comparison(compare(report, before="sft", after="ppo_no_kl"), "sft", "ppo_no_kl"), "",
              "### Examples", "", report.examples(8), ""]
    return lines


def grpo_section(report, cfg, ppo, grpo) -> list[str]:
    """GRPO next to PPO (``rlhf-jax demo --grpo``): the same reward model, KL coefficient and
    episodes per step; training scores and KL, and the paired held-out comparison."""
    if grpo is None or "grpo" not in report.models:
        return []
    h, p = grpo.history, ppo.history
    late = lambda hist, k: float(np.mean([r[k] for r in hist[-5:]]))  # noqa: E731
    return ["## GRPO next to PPO", "",
            f"GRPO: {len(h)} steps of {cfg.ppo_batch_size // cfg.grpo_group_size} prompts x G = "
            f"{cfg.grpo_group_size} completions (PPO: {len(p)} steps of {cfg.ppo_batch_size} episodes), the same "
            f"reward model, beta {cfg.kl_coef} (a k3 loss term; PPO's is in the reward), no critic. Last 5 steps: "
            f"proxy reward {late(h, 'score'):.3f} (PPO {late(p, 'score'):.3f}), KL {late(h, 'kl'):.3f} nats "
            f"(PPO {late(p, 'kl'):.3f}), gold {late(h, 'gold'):.3f} (PPO {late(p, 'gold'):.3f}). Curves: "
            "`grpo/grpo_curves.png`.", "",
            "### PPO (KL) -> GRPO on held-out prompts", "",
            format_comparison(compare(report, before="ppo", after="grpo"), "ppo", "grpo"), ""]


def dpo_section(report, cfg, dpo) -> list[str]:
    """DPO next to PPO (``rlhf-jax demo --dpo``): trained offline on the labelers' pairs (no reward
    model, no sampling); its held-out preference metrics and the paired held-out comparison."""
    if dpo is None or "dpo" not in report.models:
        return []
    h, e = dpo.history, dpo.eval
    get = lambda k: e.get(k, float("nan"))  # noqa: E731
    return ["## DPO next to PPO", "",
            f"DPO: {len(h)} steps of {cfg.reward_batch_size} of the labelers' pairs (the reward model's data, "
            f"{dpo.report.kept} pairs read), beta {cfg.dpo_beta}, the SFT model as the reference (the adapter "
            f"off), no reward model and no sampling. Loss {h[0]['loss']:.3f} -> {h[-1]['loss']:.3f}; held-out pairs: "
            f"preference accuracy {get('eval_accuracy'):.3f}, margin {get('eval_margin'):.3f}, implicit rewards "
            f"chosen {get('eval_rewards_chosen'):.3f} / rejected {get('eval_rewards_rejected'):.3f}. Curves: "
            "`dpo/dpo_curves.png`.", "",
            "### PPO (KL) -> DPO on held-out prompts", "",
            format_comparison(compare(report, before="ppo", after="dpo"), "ppo", "dpo"), ""]


def reward_section(cfg, rewards, agreements: list[float]) -> list[str]:
    """The reward models: train vs held-out accuracy of each (the gap shows overfitting), where
    each stopped, its normalisation, and how the RL reward and the monitor use them."""
    n_opt = len(rewards.optimised)
    rows = []
    for k, (res, rm) in enumerate(zip(rewards.results, [*rewards.optimised, *rewards.held_out])):
        e = res.eval
        steps = f"{res.best_step} (best of {len(res.history)})" if res.best_step is not None else str(len(res.history))
        rows.append(f"| {k} | {'optimised' if k < n_opt else 'held out (monitor)'} | {cfg.seed + k} | {steps} | "
                    f"{e.get('train_accuracy', float('nan')):.3f} | {e['eval_accuracy']:.3f} | "
                    f"{e.get('train_loss', float('nan')):.3f} | {e['eval_loss']:.3f} | {float(rm.gain):.4f} | "
                    f"{float(rm.bias):.4f} |")
    held = [r.eval["eval_accuracy"] for r in rewards.results]
    if n_opt == 1 and cfg.uncertainty_coef == 0:
        how = "PPO optimises reward model 0."
    else:
        how = (f"PPO optimises the mean of reward models 0-{n_opt - 1} minus {cfg.uncertainty_coef:g} times their "
               "standard deviation (scored in one pass over the shared base).")
    if cfg.reward_clip is not None:
        how += (f" The KL-penalised run's reward is capped at {cfg.reward_clip:g} (every completion above it earns "
                "the same); the no-KL run optimises the bare reward.")
    if rewards.held_out:
        how += (f" Reward models {n_opt}-{len(rewards.results) - 1} are never optimised: the over-optimisation monitor "
                "logs the gap between the optimised reward and their mean during PPO.")
    return ["## Reward models", "",
            f"{len(rewards.results)} reward models (LoRA rank {cfg.reward_lora.rank} + score head over the SFT base), "
            f"the same pairs and held-out split, seeds {cfg.seed}-{cfg.seed + len(rewards.results) - 1} (their own "
            f"initialisation and data order); label smoothing {cfg.reward_label_smoothing:g}; "
            + (f"early stopping after {cfg.reward_early_stopping} evaluations (every {cfg.reward_eval_every} steps) "
               f"without a better held-out accuracy, the best state kept; " if cfg.reward_early_stopping else
               f"{cfg.reward_steps} steps; ")
            + f"train accuracy on as many training pairs as are held out. Held-out pair accuracy "
            f"**{np.mean(held):.3f}** (mean), next to the labelers' own agreement with their consensus: mean "
            f"{np.mean(agreements):.3f} (range {min(agreements):.3f}-{max(agreements):.3f}). Each is normalised to "
            "mean "
            "0 / std 1 on the SFT model's samples.", "",
            "| model | role | seed | steps kept | train accuracy | held-out accuracy | train loss | held-out loss | "
            "gain | bias |", "|---|---|---|---|---|---|---|---|---|---|", *rows, "", how, ""]


def monitor_section(cfg, ppo_hist, hack_hist) -> list[str]:
    """The over-optimisation monitor's figure and when it moved."""
    if not (ppo_hist and hack_hist and MONITOR in ppo_hist[0] and MONITOR in hack_hist[0]):
        return []
    t = monitor_timing(ppo_hist, hack_hist, cfg.gap_threshold)
    gold = (f"its gold score fell 1 point below its start at step {t.gold_step}" if t.gold_step is not None
            else "its gold score never fell 1 point below its start")
    gap = (f"reached the stop threshold {cfg.gap_threshold:g} at step {t.gap_step}" if t.gap_step is not None
           else f"never reached the stop threshold {cfg.gap_threshold:g}")
    return ["### Over-optimisation monitor", "",
            "Each PPO step's rollouts are also scored by the held-out reward models; the monitor is the optimised "
            "reward minus their mean (no gold labels needed). Without KL the correlation of the gap and the gold "
            f"score (5-step means) was {t.correlation:+.2f}; the gap {gap} and {gold}"
            + (" (the monitor warned first)" if t.warned_first() else " (the monitor lagged the gold damage)")
            + f"; with KL the gap stayed at most {t.kl_max_gap:.2f}. Last 5 steps: "
            f"{t.late_gap[0]:.2f} (KL) vs {t.late_gap[1]:.2f} (no KL). "
            + ("The runs were stopped by the rule (`stop_on_gap`)." if cfg.stop_on_gap else
               "Both runs ran in full; `stop_on_gap` would stop a run at the threshold."), "",
            "![over-optimisation](overoptimisation.png)", ""]


def write_report(out: str, *, cfg, stages, sft, stats, pairs_report, validation, rewards, ppo, hack, report,
                 grpo=None, dpo=None, negatives=None) -> dict:
    agreements = [r.agreement for r in stats.table.rows if r.agreement is not None]
    checked = claims(report, ppo.history, hack.history, gap_threshold=cfg.gap_threshold)
    total = sum(stages.durations.values())
    lines = [
        *header(cfg, out, checked, total),
        *claims_section(checked),
        "## Stages", "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in stages.durations.items()], "",
        "## SFT", "",
        f"Llama-style model, width {cfg.hidden_size}, {cfg.num_layers} layers, trained from scratch: loss "
        f"{sft.history[0]['loss']:.3f} -> {sft.history[-1]['loss']:.3f}, held-out perplexity "
        f"{sft.eval.get('eval_perplexity', float('nan')):.3f}. Curves: `sft/sft_curves.png`.", "",
        "## Human feedback (simulated labelers)", "",
        f"Validation: {validation.summary()}", "", "```", stats.format(), "```", "",
        *([f"Synthetic negatives (`feedback/negatives.parquet`): {negatives.summary()}, in the reward models' "
           "training pairs only (the held-out accuracy below is on the labelers' pairs).", ""] if negatives else []),
        *reward_section(cfg, rewards, agreements),
        "## PPO", "",
        f"KL-penalised run: {len(ppo.history)} steps, beta {cfg.kl_coef}; no-KL run: {len(hack.history)} steps. "
        "![curves](ppo/ppo_curves.png)", "",
        "Reward hacking (proxy reward vs the hidden gold rubric over PPO steps):", "",
        "![hacking](reward_hacking.png)", "",
        *monitor_section(cfg, ppo.history, hack.history),
        *evaluation_section(report),
        *grpo_section(report, cfg, ppo, grpo),
        *dpo_section(report, cfg, dpo),
        *family_section(report),
        "Full evaluation report: `eval/report.md`; exported models: `export/`.", "",
    ]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    summary = {
        "miniature": without_extra_runs(cfg) == DemoConfig.quick(),
        "claims": [{"claim": c.claim, "pass": c.ok, "result": c.result, "checked": c.checked, "measured": c.measured,
                    "needs": c.needs} for c in checked],
        "sizes": checked[0].sizes if checked else {},
        "stages_seconds": stages.durations,
        "sft": {"final_loss": sft.history[-1]["loss"], **sft.eval},
        "labeler_agreement": {r.labeler: r.agreement for r in stats.table.rows},
        **({"negatives": dataclasses.asdict(negatives)} if negatives else {}),
        "reward_model": rewards.main.eval,
        "reward_models": [{"role": "optimised" if k < len(rewards.optimised) else "held_out", "best_step": r.best_step,
                           "steps": len(r.history), **r.eval} for k, r in enumerate(rewards.results)],
        "ppo_last": ppo.history[-1], "ppo_no_kl_last": hack.history[-1],
        **({"grpo_last": grpo.history[-1]} if grpo is not None else {}),
        **({"dpo_last": dpo.history[-1], "dpo_eval": dpo.eval} if dpo is not None else {}),
        "evaluation": report.means(),
        "evaluation_by_family": {g: report.means(g) for g in report.group_names},
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return summary


__all__ = ["MAIN_METRICS", "MIN_EVAL_PROMPTS", "MIN_HACKING_STEPS", "MIN_PPO_STEPS", "NOT_CHECKED", "Claim", "claims",
           "claims_section", "evaluation_section", "family_section", "header", "monitor_section", "reward_section",
           "run_sizes", "write_report"]
