"""The demo's report: what each stage measured, and the claims checked against the numbers."""

from __future__ import annotations

import dataclasses
import json
import os
import platform

import numpy as np

from rlhf_jax.evaluate import compare, format_comparison


def _check(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def claims(report, ppo_hist, hack_hist) -> list[tuple[str, bool, str]]:
    """The demo's claims, each with its measured evidence (nothing hard-coded)."""
    m = report.means()
    tox_ratio = m["ppo"]["toxic_rate"] / max(m["sft"]["toxic_rate"], 1e-9)
    out = [
        ("toxicity rate after PPO is at most half the SFT model's (exact lexicon)", tox_ratio <= 0.5,
         f"{m['sft']['toxic_rate']:.3f} -> {m['ppo']['toxic_rate']:.3f} (x{tox_ratio:.2f})"),
        ("classifier P(toxic) goes down", m["ppo"]["toxicity"] < m["sft"]["toxicity"],
         f"{m['sft']['toxicity']:.3f} -> {m['ppo']['toxicity']:.3f}"),
        ("gold score goes up", m["ppo"]["gold"] > m["sft"]["gold"], f"{m['sft']['gold']:.3f} -> {m['ppo']['gold']:.3f}"),
        ("reward goes up", m["ppo"]["reward"] > m["sft"]["reward"], f"{m['sft']['reward']:.3f} -> {m['ppo']['reward']:.3f}"),
        ("KL to the reference stays bounded (below the no-KL run's)", m["ppo"]["kl"] < m["ppo_no_kl"]["kl"],
         f"KL run {m['ppo']['kl']:.2f} nats vs no-KL run {m['ppo_no_kl']['kl']:.2f}"),
    ]
    late = lambda h, k: float(np.mean([r[k] for r in h[-5:]]))
    out.append(("reward hacking: without KL the proxy reward ends higher while the gold score ends lower",
                late(hack_hist, "score") > late(ppo_hist, "score") and m["ppo_no_kl"]["gold"] < m["ppo"]["gold"],
                f"proxy (last 5 steps) {late(ppo_hist, 'score'):.3f} (KL) vs {late(hack_hist, 'score'):.3f} (no KL); "
                f"held-out gold {m['ppo']['gold']:.3f} vs {m['ppo_no_kl']['gold']:.3f}"))
    out.append(("reward hacking: hype or repetition grows without KL",
                m["ppo_no_kl"]["hype"] > m["ppo"]["hype"] or m["ppo_no_kl"]["repetition"] > m["ppo"]["repetition"],
                f"hype words {m['ppo']['hype']:.2f} vs {m['ppo_no_kl']['hype']:.2f}; repeated words "
                f"{m['ppo']['repetition']:.3f} vs {m['ppo_no_kl']['repetition']:.3f} (KL vs no KL)"))
    return out


def write_report(out: str, *, cfg, stages, sft, stats, pairs_report, validation, rm_res, rm, ppo, hack, report) -> dict:
    agreements = [r.agreement for r in stats.table.rows if r.agreement is not None]
    checked = claims(report, ppo.history, hack.history)
    total = sum(stages.durations.values())
    lines = [
        "# rlhf_jax demo: RLHF on the built-in toy world", "",
        f"Produced by `rlhf-jax demo --out {out}` on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(JAX CPU), in {total:.0f} s. Every number below was measured in this run.", "",
        "## Claims", "", "| claim | result | measured |", "|---|---|---|",
        *[f"| {c} | {_check(ok)} | {ev} |" for c, ok, ev in checked], "",
        "## Stages", "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in stages.durations.items()], "",
        "## SFT", "",
        f"Llama-style model, width {cfg.hidden_size}, {cfg.num_layers} layers, trained from scratch: loss "
        f"{sft.history[0]['loss']:.3f} -> {sft.history[-1]['loss']:.3f}, held-out perplexity "
        f"{sft.eval.get('eval_perplexity', float('nan')):.3f}. Curves: `sft/sft_curves.png`.", "",
        "## Human feedback (simulated labelers)", "",
        f"Validation: {validation.summary()}", "", "```", stats.format(), "```", "",
        "## Reward model", "",
        f"Held-out pair accuracy **{rm_res.eval['eval_accuracy']:.3f}**, next to the labelers' own agreement with "
        f"their consensus: mean {np.mean(agreements):.3f} (range {min(agreements):.3f}-{max(agreements):.3f}). "
        f"Normalised on the SFT model's samples: gain {rm.gain:.4f}, bias {rm.bias:.4f}.", "",
        "## PPO", "",
        f"KL-penalised run: {len(ppo.history)} steps, beta {cfg.kl_coef}; no-KL run: {len(hack.history)} steps. "
        "![curves](ppo/ppo_curves.png)", "",
        "Reward hacking (proxy reward vs the hidden gold rubric over PPO steps):", "",
        "![hacking](reward_hacking.png)", "",
        "## Before / after on held-out prompts", "",
        report.table(), "", "![eval](eval/eval.png)", "",
        "### SFT -> PPO (KL)", "", format_comparison(compare(report, before="sft", after="ppo"), "sft", "ppo"), "",
        "### SFT -> PPO without KL", "",
        format_comparison(compare(report, before="sft", after="ppo_no_kl"), "sft", "ppo_no_kl"), "",
        "### Examples", "", report.examples(8), "",
        "Full evaluation report: `eval/report.md`; exported models: `export/`.", "",
    ]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    summary = {
        "claims": [{"claim": c, "pass": bool(ok), "measured": ev} for c, ok, ev in checked],
        "stages_seconds": stages.durations,
        "sft": {"final_loss": sft.history[-1]["loss"], **sft.eval},
        "labeler_agreement": {r.labeler: r.agreement for r in stats.table.rows},
        "reward_model": rm_res.eval,
        "ppo_last": ppo.history[-1], "ppo_no_kl_last": hack.history[-1],
        "evaluation": report.means(),
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return summary
