"""The seeds' whole RLHF pipeline on the built-in toy world, end to end:

world -> SFT -> completions -> simulated labelers rank them -> consensus -> pairs -> reward model
-> PPO with LoRA and a KL penalty to the frozen reference (and the same PPO without KL, for
reward hacking) -> before/after evaluation -> export -> report.

Only the public API is used; the gold rubric is seen by the labelers and the evaluation alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import feedback as fb
from rlhf_jax import toyworld as tw
from rlhf_jax.demo.claims import MONITOR, WINDOW
from rlhf_jax.demo.config import DemoConfig
from rlhf_jax.demo.plots import plot_hacking, plot_overoptimisation
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.rollout import Sampler, SamplingConfig, sample_texts
from rlhf_jax.scoring import (ClippedScorer, EnsembleScorer, GapMonitor, ModelScorer, normalize_on_samples,
                              save_reward_model)
from rlhf_jax.train import (DPOConfig, GRPOConfig, OptimConfig, PPOConfig, RewardConfig, RunConfig, SFTConfig, metric_stop,
                            train_dpo, train_grpo, train_ppo, train_reward_ensemble, train_sft)


class Stages:
    """Prints one line per stage with the elapsed time, and records the durations."""

    def __init__(self, verbose: bool = True):
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.verbose = verbose
        self.durations: dict[str, float] = {}

    def done(self, name: str, msg: str = "") -> None:
        now = time.perf_counter()
        self.durations[name] = round(now - self.last, 1)
        self.last = now
        if self.verbose:
            print(f"[demo {now - self.t0:6.1f}s] {name}: {msg}", flush=True)


def _model_config(cfg: DemoConfig, tokenizer) -> ModelConfig:
    return ModelConfig(arch="llama", vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                       num_layers=cfg.num_layers, num_heads=4, num_kv_heads=2, intermediate_size=2 * cfg.hidden_size,
                       max_position_embeddings=cfg.max_length, tie_word_embeddings=False,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


def _strip_eos(text: str) -> str:
    return text[: -len(tw.EOS)].rstrip() if text.endswith(tw.EOS) else text


def run_sft(cfg: DemoConfig, world, out: str, stages: Stages, progress: bool):
    tok = world.tokenizer
    mc = _model_config(cfg, tok)
    init = Transformer(mc).init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, 4), jnp.int32))["params"]
    rows = [{"prompt": ex.prompt, "completion": _strip_eos(ex.completion)} for ex in world.corpus]
    res = train_sft(mc, init, tok, rows,
                    SFTConfig(batch_size=cfg.sft_batch_size, max_length=cfg.max_length, eval_fraction=0.05,
                              optim=OptimConfig(learning_rate=cfg.sft_learning_rate, warmup_steps=20),
                              run=RunConfig(max_steps=cfg.sft_steps, seed=cfg.seed, out_dir=os.path.join(out, "sft"),
                                            progress=progress, resume="never")))
    stages.done("sft", f"loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f}, held-out "
                       f"perplexity {res.eval.get('eval_perplexity', float('nan')):.2f}")
    return mc, res


def run_feedback(cfg: DemoConfig, world, mc, sft_params, out: str, stages: Stages):
    tok = world.tokenizer
    sampler = Sampler(Transformer(mc), SamplingConfig(max_new_tokens=cfg.max_new_tokens))
    prompts = world.train_prompts
    samples = sample_texts(sampler, {"params": sft_params}, tok, [p.text for p in prompts], n_samples=cfg.label_samples,
                           seed=cfg.seed + 11)
    records = tw.label_prompts([p.prompt_id for p in prompts], prompts, samples,
                               n_labelers_per_prompt=cfg.labelers_per_prompt, seed=cfg.seed)
    fdir = os.path.join(out, "feedback")
    os.makedirs(fdir, exist_ok=True)
    path = os.path.join(fdir, "ranked.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    ranked, report = fb.read_ranked(path, strict=False)
    stats = fb.ranked_stats(ranked)
    with open(os.path.join(fdir, "stats.txt"), "w") as f:
        f.write(report.summary() + "\n\n" + stats.format() + "\n")
    pairs, pairs_report = fb.feedback_to_pairs(ranked, flagged=cfg.flagged)
    fb.save_pairs(pairs, os.path.join(fdir, "pairs.parquet"))
    stages.done("feedback", f"{len(ranked)} prompts x {cfg.label_samples} completions ranked by "
                            f"{cfg.labelers_per_prompt} labelers; {len(pairs)} pairs ({pairs_report.summary()})")
    return samples, ranked, stats, pairs, pairs_report, report


class RewardStage(NamedTuple):
    """The reward models of the demo, normalised on the SFT model's samples."""

    optimised: list
    """The reward models PPO optimises (``reward_members``)."""
    held_out: list
    """The monitor's members, never optimised (``monitor_members``)."""
    results: list
    """Every member's :class:`rlhf_jax.train.RewardResult`, optimised first."""

    @property
    def main(self):
        """The first optimised member's result (what the report's single-model lines show)."""
        return self.results[0]

    def scorer(self, mc, cfg: DemoConfig, *, clip: bool = True):
        """The RL reward: the one reward model, or the members' mean minus ``uncertainty_coef`` x std;
        capped at ``cfg.reward_clip`` unless ``clip=False`` (the evaluation's reward)."""
        if len(self.optimised) == 1 and cfg.uncertainty_coef == 0:
            scorer = ModelScorer(mc, self.optimised[0])
        else:
            scorer = EnsembleScorer(mc, self.optimised, uncertainty_coef=cfg.uncertainty_coef)
        return ClippedScorer(scorer, high=cfg.reward_clip) if clip and cfg.reward_clip is not None else scorer

    def monitor(self, mc):
        """``{"overopt_gap": GapMonitor}`` (:data:`rlhf_jax.demo.claims.MONITOR`), or ``{}`` without
        monitor members."""
        return {MONITOR: GapMonitor(mc, self.optimised, self.held_out)} if self.held_out else {}


def reward_config(cfg: DemoConfig, out: str, progress: bool) -> RewardConfig:
    """The reward-model training of the demo (every member: seed ``cfg.seed + k``, one split)."""
    return RewardConfig(lora=cfg.reward_lora, batch_size=cfg.reward_batch_size, max_length=cfg.max_length,
                        eval_fraction=0.2, eval_every=min(cfg.reward_eval_every, cfg.reward_steps),
                        early_stopping=cfg.reward_early_stopping, label_smoothing=cfg.reward_label_smoothing,
                        optim=OptimConfig(learning_rate=cfg.reward_learning_rate),
                        run=RunConfig(max_steps=cfg.reward_steps, seed=cfg.seed, out_dir=os.path.join(out, "reward"),
                                      progress=progress, resume="never"))


def run_negatives(cfg: DemoConfig, pairs, out: str, stages: Stages):
    """``(negatives, report)``: corrupted copies of the preferred completions ranked below them
    (``cfg.negatives`` of them; saved to ``out/feedback/negatives.parquet``), or ``(None, None)``."""
    if not cfg.negatives:
        return None, None
    negatives, report = fb.corrupted_negatives(pairs, fb.NegativesConfig(fraction=cfg.negatives, end=tw.EOS,
                                                                        seed=cfg.seed))
    fb.save_pairs(negatives, os.path.join(out, "feedback", "negatives.parquet"))
    stages.done("negatives", report.summary() + " (reward training only, never held out)")
    return negatives, report


def run_reward(cfg: DemoConfig, world, mc, sft_params, pairs, samples, out: str, stages: Stages,
               progress: bool, negatives=None) -> RewardStage:
    tok = world.tokenizer
    results = train_reward_ensemble(mc, sft_params, tok, pairs, reward_config(cfg, out, progress),
                                    members=cfg.reward_members + cfg.monitor_members, train_only=negatives)
    # normalise every member on the SFT model's own samples: mean 0, std 1 (one scale for all)
    flat_p = [p.text for p, s in zip(world.train_prompts, samples) for _ in s]
    flat_c = [c for s in samples for c in s]
    models = []
    for k, res in enumerate(results):
        rm, _ = normalize_on_samples(mc, res.reward_model, sft_params, tok, flat_p, flat_c, max_length=cfg.max_length)
        # member 0 (the main reward model) in reward/model, the others in reward/member_k/model
        save_reward_model(os.path.join(out, "reward", *(("model",) if k == 0 else (f"member_{k}", "model"))), rm)
        models.append(rm)
    stage = RewardStage(models[:cfg.reward_members], models[cfg.reward_members:], results)
    accs = ", ".join(f"{r.eval['eval_accuracy']:.3f}" for r in results)
    train = ", ".join(f"{r.eval.get('train_accuracy', float('nan')):.3f}" for r in results)
    stages.done("reward", f"{len(results)} reward models ({cfg.reward_members} optimised, {cfg.monitor_members} "
                          f"held out for the monitor); held-out pair accuracy {accs}; train accuracy {train}; "
                          f"stopped at steps {[r.best_step or len(r.history) for r in results]}")
    return stage


def repeat_rate(text: str) -> float:
    """Share of a completion's words that repeat an earlier word of it (punctuation and special
    tokens left out): 0 for varied text, near 1 for "well well well"."""
    words = [w for w in tw.completion_words(text)[0] if w.isalpha()]
    return 0.0 if not words else 1.0 - len(set(words)) / len(words)


def gold_scorers() -> dict:
    """The hidden judges, never seen by the reward model or PPO: the gold rubric, the exact
    lexicon toxicity, hype words and within-completion repetition."""
    return {"gold": lambda ps, cs: [tw.gold_score(p, c) for p, c in zip(ps, cs)],
            "toxic_rate": lambda ps, cs: [float(tw.lexicon_toxicity(c)) for c in cs],
            "hype": lambda ps, cs: [float(tw.hype_count(c)) for c in cs],
            "repetition": lambda ps, cs: [repeat_rate(c) for c in cs]}


def run_ppo(cfg: DemoConfig, world, mc, sft_params, rewards: RewardStage, out: str, name: str, *, kl_coef: float,
            steps: int, stages: Stages, progress: bool, clip: bool = True):
    """One PPO run on the RL reward (capped at ``cfg.reward_clip`` unless ``clip=False``: the no-KL
    hacking run optimises the bare reward, with no guard at all)."""
    res = train_ppo(mc, sft_params, world.tokenizer, [p.text for p in world.train_prompts],
                    rewards.scorer(mc, cfg, clip=clip),
                    PPOConfig(policy_lora=cfg.policy_lora, critic_init="reward", batch_size=cfg.ppo_batch_size,
                              mini_batch_size=cfg.ppo_batch_size // 2,
                              sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens), kl_coef=kl_coef,
                              entropy_coef=cfg.entropy_coef, optim=OptimConfig(learning_rate=cfg.ppo_learning_rate),
                              run=RunConfig(max_steps=steps, seed=cfg.seed, out_dir=os.path.join(out, name),
                                            progress=progress, resume="never")),
                    monitors={**gold_scorers(), **rewards.monitor(mc)},
                    stop=metric_stop(MONITOR, cfg.gap_threshold, window=WINDOW, name="over-optimisation gap")
                    if cfg.stop_on_gap and rewards.held_out else None)
    h = res.history
    stages.done(name, f"score {np.mean([r['score'] for r in h[:3]]):.3f} -> {np.mean([r['score'] for r in h[-3:]]):.3f}, "
                      f"KL {h[-1]['kl']:.3f} after {len(h)} steps")
    return res


def run_grpo(cfg: DemoConfig, world, mc, sft_params, rewards: RewardStage, out: str, *, stages: Stages,
             progress: bool):
    """GRPO on the same reward (the optimised reward models), KL coefficient, learning rate and
    episodes per step as the KL-penalised PPO run: ``ppo_batch_size / G`` prompts x ``G``
    completions, two minibatch updates."""
    g = cfg.grpo_group_size
    res = train_grpo(mc, sft_params, world.tokenizer, [p.text for p in world.train_prompts],
                     rewards.scorer(mc, cfg),
                     GRPOConfig(policy_lora=cfg.policy_lora, batch_size=cfg.ppo_batch_size // g, group_size=g,
                                kl_coef=cfg.kl_coef,
                                mini_batch_size=cfg.ppo_batch_size // 2 if cfg.ppo_batch_size % 2 == 0 else None,
                                sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens),
                                optim=OptimConfig(learning_rate=cfg.ppo_learning_rate),
                                run=RunConfig(max_steps=cfg.grpo_steps, seed=cfg.seed,
                                              out_dir=os.path.join(out, "grpo"), progress=progress, resume="never")),
                     monitors=gold_scorers())
    h = res.history
    first, last = np.mean([r["score"] for r in h[:3]]), np.mean([r["score"] for r in h[-3:]])
    stages.done("grpo", f"score {first:.3f} -> {last:.3f}, KL {h[-1]['kl']:.3f} after {len(h)} steps")
    return res


def run_dpo(cfg: DemoConfig, world, mc, sft_params, pairs, out: str, *, stages: Stages, progress: bool):
    """DPO on the reward model's preference pairs (same batch size, steps given by ``dpo_steps``,
    the same held-out fraction and seed, so the same split): a policy adapter like PPO's on the SFT
    model, whose reference is the SFT model itself (the adapter off: no copy)."""
    prompt_room = cfg.max_length - cfg.max_new_tokens - 1  # completions: max_new_tokens + EOS
    res = train_dpo(mc, sft_params, world.tokenizer, pairs,
                    DPOConfig(lora=cfg.policy_lora, beta=cfg.dpo_beta, batch_size=cfg.reward_batch_size,
                              max_prompt_length=prompt_room, max_completion_length=cfg.max_new_tokens + 1,
                              pad_multiple=1, eval_fraction=0.2, eval_every=min(cfg.reward_eval_every, cfg.dpo_steps),
                              optim=OptimConfig(learning_rate=cfg.dpo_learning_rate),
                              run=RunConfig(max_steps=cfg.dpo_steps, seed=cfg.seed, out_dir=os.path.join(out, "dpo"),
                                            progress=progress, resume="never")))
    h = res.history
    stages.done("dpo", f"loss {h[0]['loss']:.3f} -> {h[-1]['loss']:.3f}; held-out preference accuracy "
                       f"{res.eval.get('eval_accuracy', float('nan')):.3f}, margin {res.eval.get('eval_margin', float('nan')):.3f} "
                       f"after {len(h)} steps ({res.report.summary()})")
    return res


def run_evaluation(cfg: DemoConfig, world, mc, sft_params, rewards: RewardStage, policies: dict, out: str,
                   stages: Stages, progress: bool):
    from rlhf_jax.evaluate import EvalConfig, ModelSpec, evaluate

    ref = ModelSpec("sft", mc, sft_params)
    models = [ref] + [ModelSpec(name, mc, sft_params, adapter) for name, adapter in policies.items()]
    prompts = [p.text for p in world.held_out_prompts[: cfg.eval_prompts]]
    report = evaluate(models, reference=ref, tokenizer=world.tokenizer, prompts=prompts,
                      config=EvalConfig(sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens),
                                        samples_per_prompt=cfg.eval_samples, seed=cfg.seed + 7, progress=progress),
                      reward=rewards.scorer(mc, cfg, clip=False), toxicity=world.toxicity.prob_toxic,
                      scorers=gold_scorers(), on_topic=tw.on_topic_scores, groups=tw.prompt_family)
    edir = os.path.join(out, "eval")
    os.makedirs(edir, exist_ok=True)
    report.to_json(os.path.join(edir, "eval.json"))
    report.to_markdown(os.path.join(edir, "report.md"))
    report.plot(os.path.join(edir, "eval.png"))
    stages.done("evaluate", f"{len(prompts)} held-out prompts x {cfg.eval_samples} samples x {len(models)} models")
    return report


def run_demo(cfg: DemoConfig = DemoConfig(), out: str = "runs/demo", *, progress: bool = True) -> dict:
    """Run every stage and write ``out/report.md`` (+ ``summary.json``, plots, models). Returns the summary."""
    from rlhf_jax.demo.report import write_report
    from rlhf_jax.export import save_hf_folder

    os.makedirs(out, exist_ok=True)
    stages = Stages()
    world = tw.build_world(os.path.join(out, "world"), config=cfg.world)
    stages.done("world", f"{len(world.train_prompts)} train / {len(world.held_out_prompts)} held-out prompts, "
                         f"{len(world.corpus)} SFT demonstrations, vocabulary {len(world.tokenizer)}")
    mc, sft = run_sft(cfg, world, out, stages, progress)
    samples, ranked, stats, pairs, pairs_report, val_report = run_feedback(cfg, world, mc, sft.params, out, stages)
    if len(pairs) < 2 * cfg.reward_batch_size:
        raise RuntimeError(f"only {len(pairs)} preference pairs came out of the labeling ({pairs_report.summary()}); "
                           "the SFT model is too weak: raise sft_steps")
    negatives, negatives_report = run_negatives(cfg, pairs, out, stages)
    rewards = run_reward(cfg, world, mc, sft.params, pairs, samples, out, stages, progress, negatives)
    ppo = run_ppo(cfg, world, mc, sft.params, rewards, out, "ppo", kl_coef=cfg.kl_coef, steps=cfg.ppo_steps,
                  stages=stages, progress=progress)
    hack = run_ppo(cfg, world, mc, sft.params, rewards, out, "ppo_no_kl", kl_coef=0.0, steps=cfg.hacking_steps,
                   stages=stages, progress=progress, clip=False)
    grpo = run_grpo(cfg, world, mc, sft.params, rewards, out, stages=stages, progress=progress) if cfg.grpo_steps else None
    dpo = run_dpo(cfg, world, mc, sft.params, pairs, out, stages=stages, progress=progress) if cfg.dpo_steps else None
    runs = {"ppo (KL %.2g)" % cfg.kl_coef: ppo.history, "ppo_no_kl (KL 0)": hack.history}
    policies = {"ppo": ppo.state.params["policy"], "ppo_no_kl": hack.state.params["policy"]}
    if grpo is not None:
        runs["grpo (KL %.2g)" % cfg.kl_coef] = grpo.history
        policies["grpo"] = grpo.state.params
    if dpo is not None:
        policies["dpo"] = dpo.policy
    plot_hacking(runs, os.path.join(out, "reward_hacking.png"))
    if rewards.held_out:
        plot_overoptimisation(runs, os.path.join(out, "overoptimisation.png"), key=MONITOR, threshold=cfg.gap_threshold,
                              window=WINDOW)
    report = run_evaluation(cfg, world, mc, sft.params, rewards, policies, out, stages, progress)
    save_hf_folder(os.path.join(out, "export", "sft"), mc, sft.params, tokenizer=world.tokenizer)
    policy = ppo.state.params["policy"]
    save_hf_folder(os.path.join(out, "export", "ppo_policy"), mc, sft.params, tokenizer=world.tokenizer,
                   lora=policy.tree, lora_config=policy.config)
    stages.done("export", f"Hugging Face folders in {out}/export (sft, ppo_policy merged)")
    summary = write_report(out, cfg=cfg, stages=stages, sft=sft, stats=stats, pairs_report=pairs_report,
                           validation=val_report, rewards=rewards, ppo=ppo, hack=hack, report=report, grpo=grpo, dpo=dpo,
                           negatives=negatives_report)
    stages.done("report", f"{out}/report.md")
    return summary
