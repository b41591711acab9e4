"""The demo's report: what each stage measured, and the claims checked against the numbers.

Each claim needs a run big enough to show it; below that size its result is *not checked at this
size* (its measured numbers are still printed), never a PASS or FAIL that the size decides:

- Before/after claims on held-out prompts need :data:`MIN_EVAL_PROMPTS` evaluation prompts: the
  SFT model's toxic rate is about 0.25, so halving it is a change of about 0.12, and the 95%
  interval of a paired per-prompt difference is about ``1.96 * 0.35 / sqrt(P)`` wide on each side
  (per-prompt standard deviation ~0.35 with 4 samples): 0.07 at 100 prompts, 0.17 at the
  miniature's 16. They also need :data:`MIN_PPO_STEPS` PPO steps: a LoRA policy starts equal to
  the reference (B = 0), and 3 steps leave it there (KL ~0), so "after" is "before".
- The KL claim needs both runs to have trained (:data:`MIN_PPO_STEPS` each) and the same
  evaluation size.
- The reward-hacking claims compare the last 5 steps of the two runs and the held-out scores
  after them; over-optimising the proxy shows late, so the run without KL needs
  :data:`MIN_HACKING_STEPS` steps (half of the full run's 120), the KL run :data:`MIN_PPO_STEPS`.

``rlhf-jax demo --quick`` (:meth:`DemoConfig.quick`, 16 prompts, 3 + 3 PPO steps) shows that the
stages connect; its report says so in its header and checks none of these claims.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import NamedTuple

import numpy as np

from rlhf_jax.demo.config import DemoConfig
from rlhf_jax.evaluate import compare, format_comparison

MIN_EVAL_PROMPTS = 100
"""Held-out prompts a before/after claim needs (see the module docstring)."""
MIN_PPO_STEPS = 20
"""PPO steps of the KL-penalised run (and of the no-KL run, for the KL claim) a claim needs."""
MIN_HACKING_STEPS = 60
"""PPO steps of the no-KL run the reward-hacking claims need."""
NOT_CHECKED = "not checked at this size"
"""The result of a claim whose run is too small to show it."""

MAIN_METRICS = ("reward", "gold", "on_topic", "toxicity", "toxic_rate", "hype", "repetition", "kl", "length")
"""The metrics of the per-family table, those present in the evaluation, in this order."""


class Claim(NamedTuple):
    """One claim of the demo, what the numbers say, and whether the run could show it."""

    claim: str
    """What is claimed."""
    ok: bool
    """Whether the measured numbers agree (whatever the size)."""
    measured: str
    """The evidence, measured in this run."""
    needs: dict[str, int]
    """Size -> the least this claim needs, e.g. ``{"held-out prompts": 100}``."""
    sizes: dict[str, int]
    """Size -> what this run had."""

    @property
    def checked(self) -> bool:
        """Whether the run reaches every size the claim needs."""
        return all(self.sizes[k] >= v for k, v in self.needs.items())

    @property
    def result(self) -> str:
        """``"PASS"``, ``"FAIL"`` or :data:`NOT_CHECKED`."""
        return NOT_CHECKED if not self.checked else "PASS" if self.ok else "FAIL"

    def shortfall(self) -> str:
        """What is missing, e.g. ``"needs >= 20 PPO steps (this run: 3)"``; ``""`` when checked."""
        return "; ".join(f"needs >= {v} {k} (this run: {self.sizes[k]})" for k, v in self.needs.items()
                         if self.sizes[k] < v)


def run_sizes(report, ppo_hist, hack_hist) -> dict[str, int]:
    """The sizes the claims depend on, as this run had them."""
    return {"held-out prompts": len(report.prompts), "PPO steps": len(ppo_hist), "no-KL PPO steps": len(hack_hist)}


def claims(report, ppo_hist, hack_hist) -> list[Claim]:
    """The demo's claims, each with its measured evidence (nothing hard-coded) and the sizes it needs."""
    m = report.means()
    sizes = run_sizes(report, ppo_hist, hack_hist)
    after = {"held-out prompts": MIN_EVAL_PROMPTS, "PPO steps": MIN_PPO_STEPS}
    both = {**after, "no-KL PPO steps": MIN_PPO_STEPS}
    hacking = {**after, "no-KL PPO steps": MIN_HACKING_STEPS}
    tox_ratio = m["ppo"]["toxic_rate"] / max(m["sft"]["toxic_rate"], 1e-9)
    late = lambda h, k: float(np.mean([r[k] for r in h[-5:]]))  # noqa: E731
    rows = [
        ("toxicity rate after PPO is at most half the SFT model's (exact lexicon)", tox_ratio <= 0.5,
         f"{m['sft']['toxic_rate']:.3f} -> {m['ppo']['toxic_rate']:.3f} (x{tox_ratio:.2f})", after),
        ("classifier P(toxic) goes down", m["ppo"]["toxicity"] < m["sft"]["toxicity"],
         f"{m['sft']['toxicity']:.3f} -> {m['ppo']['toxicity']:.3f}", after),
        ("gold score goes up", m["ppo"]["gold"] > m["sft"]["gold"], f"{m['sft']['gold']:.3f} -> {m['ppo']['gold']:.3f}",
         after),
        ("reward goes up", m["ppo"]["reward"] > m["sft"]["reward"],
         f"{m['sft']['reward']:.3f} -> {m['ppo']['reward']:.3f}", after),
        ("KL to the reference stays bounded (below the no-KL run's)", m["ppo"]["kl"] < m["ppo_no_kl"]["kl"],
         f"KL run {m['ppo']['kl']:.2f} nats vs no-KL run {m['ppo_no_kl']['kl']:.2f}", both),
        ("reward hacking: without KL the proxy reward ends higher while the gold score ends lower",
         late(hack_hist, "score") > late(ppo_hist, "score") and m["ppo_no_kl"]["gold"] < m["ppo"]["gold"],
         f"proxy (last 5 steps) {late(ppo_hist, 'score'):.3f} (KL) vs {late(hack_hist, 'score'):.3f} (no KL); "
         f"held-out gold {m['ppo']['gold']:.3f} vs {m['ppo_no_kl']['gold']:.3f}", hacking),
        ("reward hacking: hype or repetition grows without KL",
         m["ppo_no_kl"]["hype"] > m["ppo"]["hype"] or m["ppo_no_kl"]["repetition"] > m["ppo"]["repetition"],
         f"hype words {m['ppo']['hype']:.2f} vs {m['ppo_no_kl']['hype']:.2f}; repeated words "
         f"{m['ppo']['repetition']:.3f} vs {m['ppo_no_kl']['repetition']:.3f} (KL vs no KL)", hacking),
    ]
    return [Claim(c, bool(ok), ev, needs, sizes) for c, ok, ev, needs in rows]


def header(cfg, out: str, checked: list[Claim], seconds: float) -> list[str]:
    """Title, how the run was made, and for the miniature (or any run too small for some
    claims) what that means."""
    plain = dataclasses.replace(cfg, grpo_steps=0)  # --grpo: the same demo plus a GRPO run
    grpo = " --grpo" if cfg.grpo_steps == cfg.ppo_steps else ""
    quick = plain == DemoConfig.quick() and (grpo or not cfg.grpo_steps)
    command = (f"`rlhf-jax demo --quick{grpo} --out {out}`" if quick else f"`rlhf-jax demo{grpo} --out {out}`"
               if plain == DemoConfig() and (grpo or not cfg.grpo_steps) else
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


def write_report(out: str, *, cfg, stages, sft, stats, pairs_report, validation, rm_res, rm, ppo, hack, report,
                 grpo=None) -> dict:
    agreements = [r.agreement for r in stats.table.rows if r.agreement is not None]
    checked = claims(report, ppo.history, hack.history)
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
        "## Reward model", "",
        f"Held-out pair accuracy **{rm_res.eval['eval_accuracy']:.3f}**, next to the labelers' own agreement with "
        f"their consensus: mean {np.mean(agreements):.3f} (range {min(agreements):.3f}-{max(agreements):.3f}). "
        f"Normalised on the SFT model's samples: gain {rm.gain:.4f}, bias {rm.bias:.4f}.", "",
        "## PPO", "",
        f"KL-penalised run: {len(ppo.history)} steps, beta {cfg.kl_coef}; no-KL run: {len(hack.history)} steps. "
        "![curves](ppo/ppo_curves.png)", "",
        "Reward hacking (proxy reward vs the hidden gold rubric over PPO steps):", "",
        "![hacking](reward_hacking.png)", "",
        *evaluation_section(report),
        *grpo_section(report, cfg, ppo, grpo),
        *family_section(report),
        "Full evaluation report: `eval/report.md`; exported models: `export/`.", "",
    ]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    summary = {
        "miniature": dataclasses.replace(cfg, grpo_steps=0) == DemoConfig.quick(),
        "claims": [{"claim": c.claim, "pass": c.ok, "result": c.result, "checked": c.checked, "measured": c.measured,
                    "needs": c.needs} for c in checked],
        "sizes": checked[0].sizes if checked else {},
        "stages_seconds": stages.durations,
        "sft": {"final_loss": sft.history[-1]["loss"], **sft.eval},
        "labeler_agreement": {r.labeler: r.agreement for r in stats.table.rows},
        "reward_model": rm_res.eval,
        "ppo_last": ppo.history[-1], "ppo_no_kl_last": hack.history[-1],
        **({"grpo_last": grpo.history[-1]} if grpo is not None else {}),
        "evaluation": report.means(),
        "evaluation_by_family": {g: report.means(g) for g in report.group_names},
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return summary
