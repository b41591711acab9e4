"""PPO throughput and peak memory: TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (four full models:
policy, reference, value, reward) against our ``rlhf_jax.train.train_ppo`` (one frozen base +
adapters) on the SAME random Llama checkpoint (width 256, 4 blocks, the toy world's ~410-word
vocabulary), the same prompts left-padded to the same length (16), batch 16 episodes, 48 response
tokens (no early stop on either side: ours ``eos_ids=()``, TRL ``stop_token=None`` so the policy's
``eos_token_id`` is ``None``), 4 PPO epochs of 2 minibatches of 8 (8 optimizer updates per step),
k1 KL penalty, clipped value loss, whitened advantages, temperature 1, float32, no gradient
checkpointing.

Rows:
- TRL: its standard layout, four full models; policy and value fully fine-tuned.
- ours LoRA: policy LoRA r=8 and critic LoRA r=8 (started from the reward adapter), reward LoRA
  r=8 + score head, all on one base (the library's design).
- ours full: full fine-tuning (``PPOConfig(policy_lora=None, critic_lora=None)``): the policy and
  the critic are trainable copies of the whole model (the critic starts from the base with the
  reward adapter merged in), the reference is the frozen base and the reward its adapter: the
  like-for-like against TRL's two trained full models.

Both of ours take PPO's "old" log-probs from the sampler (``old_logprobs="sampler"``: the
log-probs the sampler computed while generating, equal to a recomputation up to float rounding)
instead of one more policy forward pass; ``--old-logprobs recompute`` does that pass, as TRL does.

Throughput: the three run in ONE process, alternating step by step (our steps run inside a TRL
step-end callback, outside TRL's timed span). Episodes/s = 16 / median step time over the steps
after the first; the first step's excess over the median is reported as compile / warm-up.
Generation is timed apart (ours: the policy's sampler called once more per step; TRL: its
``batch_generation`` wrapped).

TRL calls ``gc.collect()`` twice per step; in a process that also holds JAX that would scan our
objects too, so everything alive before training is moved out of the collector's reach
(``gc.freeze()``): this favours TRL slightly over a TRL-only process.

Peak memory: each run again, alone, in a fresh child process (``--child``) for a few steps: the
RSS high-water mark (``VmHWM``) at the end, and the resident size after imports (before any model
is loaded).

Threads: torch gets every usable core, as XLA's CPU client does; ``OMP_WAIT_POLICY`` is left
unset (torch out of the box). On a busy machine torch's OpenMP steps slow down erratically; the
script then prints a warning, and ``--omp-wait-policy PASSIVE`` gives steadier numbers that
handicap torch (~1.5x when idle). ``taskset -c 0 python ...`` compares one core each.

Model FLOPs of one PPO step (attention-score FLOPs left out), with T = 16 + 48, B = 16, E = 4,
N = matmul parameters with the LM head, N_h = without it (critic and reward read hidden states):

    F = 2 N_h B (T - 1) + 2 V D B 48             generation (prefill + decode with logits)
      + 2 B T (2 N + 2 N_h)                      policy, reference, critic, reward forwards
      + E B T c (N + N_h)                        updates of policy and critic

with c = 6 for full fine-tuning and c = 4 for LoRA (forward + gradient through the activations; the
frozen base gets no weight gradient); with sampler log-probs the policy forward (2 B T N) is not
done and not counted.

    python experiments/bench_ppo.py            # full run, a few minutes on 2 cores
    python experiments/bench_ppo.py --quick    # 1 + 2 steps
    python experiments/bench_ppo.py --gpu      # accelerator: ours only, 0.5B-class bf16 model
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

SCRIPT = os.path.abspath(__file__)


@dataclasses.dataclass(frozen=True)
class Setup:
    batch: int = 16
    mini_batch: int = 8
    epochs: int = 4
    response: int = 48
    rank: int = 8
    warmup: int = 1
    steps: int = 5  # measured steps after the warm-up
    mem_steps: int = 3
    lr: float = 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_common_args(p)
    p.add_argument("--no-memory", action="store_true", help="skip the per-run child processes")
    p.add_argument("--variants", default="lora,full",
                   help="our runs, comma separated: lora (r=8 adapters), full (full fine-tuning)")
    p.add_argument("--old-logprobs", default="sampler", choices=["sampler", "recompute"],
                   help="our PPOConfig.old_logprobs (TRL recomputes them)")
    p.add_argument("--no-big", action="store_true", help="skip the memory runs at the larger width")
    p.add_argument("--child", choices=["trl", "lora", "full"], help=argparse.SUPPRESS)
    p.add_argument("--big", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--world", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# Memory at a width where the weights, not the runtimes, dominate: 92M parameters (width 768,
# 12 blocks), on a short step (batch 4, one minibatch, 1 epoch, 8 response tokens) so that TRL's
# four models run in seconds on 2 cores.
BIG_SHAPE = dict(width=768, layers=12, heads=12, kv_heads=12, intermediate=2304)
BIG = Setup(batch=4, mini_batch=4, epochs=1, response=8, warmup=1, steps=0, mem_steps=1)


def setup_of(args) -> Setup:
    if getattr(args, "big", False):
        return BIG
    s = Setup()
    if args.tiny:
        s = dataclasses.replace(s, batch=4, mini_batch=2, epochs=1, response=4, rank=4, steps=1, mem_steps=1)
    elif args.quick:
        s = dataclasses.replace(s, steps=2, mem_steps=2)
    if args.gpu and not args.tiny:
        s = dataclasses.replace(s, batch=64, mini_batch=16, rank=16)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    return s


# --------------------------------------------------------------------------------------------
# our side (never imports torch)


class OursPPO:
    """Our PPO one step at a time, from the public pieces ``train_ppo`` runs
    (:func:`rlhf_jax.train.prepare_ppo`): ``train_step(i)`` = step ``i``'s batch (generation +
    scoring) and the jitted update, state donated, as :func:`rlhf_jax.train.fit` does."""

    def __init__(self, model_config, base, tokenizer, prompts, reward, config):
        import jax

        from rlhf_jax.train import prepare_ppo

        self.model_config, self.base, self.config = model_config, base, config
        self.run = prepare_ppo(model_config, base, tokenizer, prompts, reward, config)
        self.state, self.prompts = self.run.state, self.run.prompts.batch
        self.step_fn = jax.jit(self.run.algorithm.step, donate_argnums=0)

    def batch(self, i: int):
        from rlhf_jax.train import FitContext

        return self.run.batches(i, FitContext(self.state, self.base, None))[0]

    def train_step(self, i: int) -> dict:
        self.state, metrics = self.step_fn(self.state, self.base, self.batch(i))
        return metrics

    def rollout(self, i: int):
        """Step ``i``'s generation alone, with the current policy."""
        import jax

        from rlhf_jax.lora import model_variables
        from rlhf_jax.train import batch_indices

        idx = batch_indices(i, self.prompts.tokens.shape[0], self.config.batch_size, self.config.run.seed)
        key = jax.random.fold_in(jax.random.fold_in(self.state.rng, i), 0)
        return self.run.sampler(model_variables(self.base, self.state.params["policy"]), self.prompts.tokens[idx],
                                self.prompts.mask[idx], key)


def make_ours(variant: str, cfg, base, tokenizer, prompts, s: Setup, old_logprobs: str = "sampler"):
    """Our PPO: ``variant`` "lora" (r = s.rank adapters) or "full" (policy and critic fully
    fine-tuned); the critic starts from the reward adapter (merged into its copy when full)."""
    import jax

    from rlhf_jax.lora import Adapter, LoraConfig, init_lora
    from rlhf_jax.model import Transformer, init_head
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.scoring import ModelScorer, RewardModel
    from rlhf_jax.train import PPOConfig, RunConfig

    key = jax.random.PRNGKey(1)
    rm_lora = LoraConfig(rank=s.rank, alpha=2.0 * s.rank)
    rm = RewardModel(Adapter(init_lora(Transformer(cfg, lora=rm_lora), key), rm_lora),
                     init_head(jax.random.fold_in(key, 1), cfg.hidden_size))
    lora = LoraConfig(rank=s.rank, alpha=2.0 * s.rank) if variant == "lora" else None
    pc = PPOConfig(policy_lora=lora, critic_lora=lora, critic_init="reward", old_logprobs=old_logprobs,
                   batch_size=s.batch, mini_batch_size=s.mini_batch, ppo_epochs=s.epochs,
                   sampling=SamplingConfig(max_new_tokens=s.response, temperature=1.0, eos_ids=()),
                   kl_coef=0.05, kl_estimator="k1", whiten_advantages=True,
                   optim=dataclasses.replace(PPOConfig().optim, learning_rate=s.lr),
                   run=RunConfig(progress=False, tensorboard=False, max_steps=10 ** 6))
    return OursPPO(cfg, base, tokenizer, prompts, ModelScorer(cfg, rm), pc)


def ours_step(trainer, i: int) -> tuple[float, float]:
    """One whole step (rollout + scoring + jitted PPO step), blocked; ``(seconds, mean length)``."""
    import jax

    t0 = time.perf_counter()
    m = trainer.train_step(i)
    jax.block_until_ready(trainer.state)
    return time.perf_counter() - t0, float(m["response_length"])


def ours_rollout_time(trainer, i: int) -> float:
    """The generation phase alone: one more rollout with the current state."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(trainer.rollout(i))
    return time.perf_counter() - t0


def world_prompts(world_dir):
    w = bc.build_world_dir(world_dir)
    return [p.text for p in w.train_prompts]


def load_pretrained_config(ckpt):
    import json

    from rlhf_jax.model import config_from_hf

    with open(Path(ckpt) / "config.json") as f:
        return config_from_hf(json.load(f))


def load_ours(ckpt, world_dir, layers):
    cfg, base, _ = bc.load_cpu_model(ckpt, layers)
    return cfg, base, bc.load_world_tokenizer(world_dir), world_prompts(world_dir)


# --------------------------------------------------------------------------------------------
# TRL's side


def make_trl(ckpt, world_dir, s: Setup, total_steps: int, out_dir: str, callbacks=()):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhf_jax.rollout import left_pad

    bc.hf_quiet()
    tok = bc.load_world_tokenizer(world_dir)
    tok.padding_side = "left"
    # the same prompts as ours, left padded to the same length (TRL masks `input_ids == pad`)
    ids = tok(world_prompts(world_dir))["input_ids"]
    pb = left_pad(ids, pad_id=tok.pad_token_id, bucket=16)
    data = Dataset.from_dict({"input_ids": [list(map(int, r)) for r in pb.tokens]})
    load = dict(dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(ckpt, **load)
    ref = AutoModelForCausalLM.from_pretrained(ckpt, **load)
    value = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1, **load)
    reward = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1, **load)
    args = PPOConfig(output_dir=out_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=1,
                     num_mini_batches=s.batch // s.mini_batch, num_ppo_epochs=s.epochs,
                     total_episodes=s.batch * total_steps, response_length=s.response, temperature=1.0,
                     stop_token=None, local_rollout_forward_batch_size=s.batch, num_sample_generations=0,
                     kl_coef=0.05, kl_estimator="k1", learning_rate=s.lr, report_to="none", save_strategy="no",
                     logging_steps=1, use_cpu=True, seed=0, gradient_checkpointing=False, bf16=False,
                     disable_tqdm=True, dataloader_num_workers=0)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=data, eval_dataset=data.select(range(s.batch)),
                         callbacks=list(callbacks))
    bc.drop_printer(trainer)
    return trainer


class GenerationTimer:
    """Wraps TRL's module-level ``batch_generation``: time and response length of each call."""

    def __init__(self):
        import trl.experimental.ppo.ppo_trainer as mod

        self.mod, self.orig = mod, mod.batch_generation
        self.times: list[float] = []
        self.lengths: list[int] = []
        mod.batch_generation = self

    def __call__(self, model, queries, *a, **k):
        t0 = time.perf_counter()
        out = self.orig(model, queries, *a, **k)
        self.times.append(time.perf_counter() - t0)
        self.lengths.append(int(out[0].shape[1] - queries.shape[1]))
        return out

    def restore(self):
        self.mod.batch_generation = self.orig


# --------------------------------------------------------------------------------------------
# model FLOPs


def ppo_flops(cfg, s: Setup, prompt_len: int, c: int, recompute: bool = True) -> float:
    n, nh = bc.matmul_params(cfg), bc.matmul_params(cfg, lm_head=False)
    t, b = prompt_len + s.response, s.batch
    gen = 2 * nh * b * (t - 1) + 2 * cfg.vocab_size * cfg.hidden_size * b * s.response
    exp = 2 * b * t * ((2 if recompute else 1) * n + 2 * nh)
    upd = s.epochs * b * t * c * (n + nh)
    return float(gen + exp + upd)


# --------------------------------------------------------------------------------------------
# child: one run alone, for its peak memory


def child(args):
    s = setup_of(args)
    total = s.warmup + s.mem_steps
    if args.child == "trl":
        import torch  # noqa: F401
        import trl.experimental.ppo  # noqa: F401

        bc.torch_threads()
        base_rss = bc.rss_now()
        clock = bc.step_clock()
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trl(args.ckpt, args.world, s, total, out, callbacks=[clock])
            trainer.train()
        times = clock.times
    else:
        import jax

        import rlhf_jax.train  # noqa: F401

        jax.devices()
        base_rss = bc.rss_now()
        trainer = make_ours(args.child, *load_ours(args.ckpt, args.world, args.layers), s, args.old_logprobs)
        times = [ours_step(trainer, i)[0] for i in range(total)]
    bc.emit_result({"peak": bc.peak_rss(), "base": base_rss, "times": times,
                    "eps": s.batch / bc.median(times[s.warmup:])})


# --------------------------------------------------------------------------------------------
# GPU mode: ours only


def gpu_main(args, s: Setup):

    cfg, peak, how, base = bc.gpu_start(args.tiny)
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(args.world_dir or Path(root) / "world")
        trainer = make_ours("lora", cfg, base, world.tokenizer, [p.text for p in world.train_prompts], s,
                            args.old_logprobs)
        times, gen = [], []
        for i in range(s.warmup + s.steps):
            times.append(ours_step(trainer, i)[0])
            if i >= s.warmup:
                gen.append(ours_rollout_time(trainer, i))
    step, g = bc.median(times[s.warmup:]), bc.median(gen)
    p = trainer.prompts.tokens.shape[1]
    flops = ppo_flops(cfg, s, p, 4, args.old_logprobs == "recompute")
    print(f"\nmatmul limit: {peak / 1e12:.1f} TFLOP/s ({how})\n")
    bc.print_table(
        ["model", "batch", "episodes/s", "s/step", "generation tokens/s", "compile s", "model TFLOP/s",
         "% of matmul"],
        [[f"{bc.params_label(cfg)} {cfg.dtype}, LoRA r={s.rank}", s.batch, f"{s.batch / step:.1f}",
          f"{step:.3f}", f"{s.batch * s.response / g:,.0f}", f"{times[0] - step:.1f}",
          f"{flops / step / 1e12:.2f}", f"{100 * flops / step / peak:.1f}%"]])
    print(f"ratio gpu PPO: {s.batch / step:.1f} episodes/s, generation {s.batch * s.response / g:,.0f} tokens/s, "
          f"{100 * flops / step / peak:.1f}% of the bf16 matmul rate")
    return {"eps": s.batch / step}


# --------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    s = setup_of(args)
    if args.gpu:
        return gpu_main(args, s)
    torch, threads = bc.start_torch(args.omp_wait_policy)
    rates = bc.matmul_rate()
    total = s.warmup + s.steps
    with tempfile.TemporaryDirectory() as root:
        world_dir = Path(args.world_dir or Path(root) / "world")
        world = bc.build_world_dir(world_dir)
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), **shape)
        cfg, base, tok, prompts = load_ours(ckpt, world_dir, args.layers)
        variants = [v for v in args.variants.split(",") if v]
        if "lora" not in variants:
            raise SystemExit("--variants must include lora")
        ours = {v: make_ours(v, cfg, base, tok, prompts, s, args.old_logprobs) for v in variants}
        p = ours["lora"].prompts.tokens.shape[1]
        rec = {v: {"t": [], "len": [], "gen": []} for v in ours}

        def between(i):  # after TRL's step i: our step i for each variant
            for v, tr in ours.items():
                dt, ln = ours_step(tr, i)
                rec[v]["t"].append(dt)
                rec[v]["len"].append(ln)
                if i >= s.warmup:
                    rec[v]["gen"].append(ours_rollout_time(tr, i))

        clock = bc.step_clock(between)
        gen = GenerationTimer()
        with tempfile.TemporaryDirectory() as out:
            trl_trainer = make_trl(ckpt, world_dir, s, total, out, callbacks=[clock])
            print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} "
                  f"blocks, vocab {cfg.vocab_size}); prompts {p} tokens (left padded), response {s.response}, "
                  f"batch {s.batch}, {s.epochs} epochs x {s.batch // s.mini_batch} minibatches; "
                  f"{s.warmup} warm-up + {s.steps} measured steps", flush=True)
            gc.collect()
            gc.freeze()  # TRL's per-step gc.collect() must not scan our objects
            trl_trainer.train()
            gc.unfreeze()
        gen.restore()
        rows = {"trl": {"t": clock.times, "len": gen.lengths, "gen": gen.times[s.warmup:]}, **rec}
        mem, big = {}, {}
        if not args.no_memory:
            for v in ["trl", *variants]:
                mem[v] = bc.run_child(SCRIPT, ["--child", v, "--ckpt", ckpt, "--world", str(world_dir),
                                               "--old-logprobs", args.old_logprobs, "--layers", args.layers]
                                      + (["--tiny"] if args.tiny else []) + (["--quick"] if args.quick else []))
            if not (args.no_big or args.tiny or args.quick):
                big_ckpt = bc.build_checkpoint(Path(root) / "big", vocab=len(world.tokenizer), **BIG_SHAPE)
                big_cfg = load_pretrained_config(big_ckpt)
                for v in ("trl", *variants):
                    big[v] = bc.run_child(SCRIPT, ["--child", v, "--big", "--ckpt", big_ckpt, "--world",
                                                   str(world_dir), "--old-logprobs", args.old_logprobs,
                                                   "--layers", args.layers])
    rates += bc.matmul_rate()
    peak = bc.median(rates)
    names = {"trl": "TRL 1.12 PPOTrainer (4 full models)", "lora": f"ours, LoRA r={s.rank} (one base)",
             "full": "ours, full fine-tuning (one frozen base + 2 trained copies)"}
    held = {"trl": "policy, ref, value, reward: 4 x base", "lora": "1 base + 3 adapters + 2 heads",
            "full": "base (reference) + policy + critic copies + reward adapter + 2 heads"}
    c = {"trl": 6, "lora": 4, "full": 6}
    print(f"\nfloat32 matmul rate (jitted 1024^3, median of {len(rates)}): {peak / 1e9:.1f} GFLOP/s; "
          f"load average at end {os.getloadavg()[0]:.1f}\n")
    eps = {}
    table = []
    for v, r in rows.items():
        med = bc.median(r["t"][s.warmup:])
        eps[v] = s.batch / med
        f = ppo_flops(cfg, s, p, c[v], v == "trl" or args.old_logprobs == "recompute") / med
        table.append([names[v], held[v], f"{eps[v]:.2f}", f"{med:.2f}", f"{bc.median(r['gen']):.2f}",
                      f"{r['t'][0] - med:.1f}", f"{np.mean(r['len']):.1f}", f"{f / 1e9:.1f}",
                      f"{100 * f / peak:.1f}%"])
    bc.print_table(["run", "models held", "episodes/s", "s/step", "generation s/step", "compile / warm-up s",
                    "mean response length", "model GFLOP/s", "% of matmul rate"], table)
    print("seconds per step (the first is the warm-up):")
    for v, r in rows.items():
        print(bc.steps_line(names[v], r["t"]))
    print()
    mem_headers = ["run (alone, in a child process)", "peak RSS", "RSS after imports", "peak - imports",
                   "episodes/s (alone)"]
    if mem:
        print(f"peak memory, the model above ({s.mem_steps} steps after the warm-up):")
        bc.print_table(mem_headers, [[names[v], bc.mib(m["peak"]), bc.mib(m["base"]), bc.mib(m["peak"] - m["base"]),
                                      f"{m['eps']:.2f}"] for v, m in mem.items()])
    if big:
        print(f"peak memory at {bc.params_label(big_cfg)} parameters (width {big_cfg.hidden_size}, "
              f"{big_cfg.num_layers} blocks; batch {BIG.batch}, {BIG.response} response tokens, 1 epoch, 2 steps; "
              f"float32 weights: {bc.mib(4 * big_cfg.num_params())} per copy):")
        bc.print_table(mem_headers, [[names[v], bc.mib(m["peak"]),
                                      bc.mib(m["base"]), bc.mib(m["peak"] - m["base"]), f"{m['eps']:.2f}"]
                                     for v, m in big.items()])
    print(bc.ratio_line("PPO episodes/s, ours LoRA", eps["lora"], eps["trl"], target=1.5))
    if "full" in eps:
        print(bc.ratio_line("PPO episodes/s, ours full fine-tuning", eps["full"], eps["trl"],
                            target=1.2))
    if mem:
        print(bc.ratio_line("PPO peak RSS, ours LoRA", mem["lora"]["peak"], mem["trl"]["peak"], target=0.4,
                            higher_is_better=False))
        print(bc.ratio_line("PPO peak RSS above imports, ours LoRA", mem["lora"]["peak"] - mem["lora"]["base"],
                            mem["trl"]["peak"] - mem["trl"]["base"]))
        if "full" in mem:
            print(bc.ratio_line("PPO peak RSS, ours full fine-tuning", mem["full"]["peak"], mem["trl"]["peak"]))
    if big:
        print(bc.ratio_line(f"PPO peak RSS at {bc.params_label(big_cfg)}, ours LoRA", big["lora"]["peak"],
                            big["trl"]["peak"], target=0.4, higher_is_better=False))
        print(bc.ratio_line(f"PPO peak RSS above imports at {bc.params_label(big_cfg)}, ours LoRA",
                            big["lora"]["peak"] - big["lora"]["base"], big["trl"]["peak"] - big["trl"]["base"]))
        if "full" in big:
            print(bc.ratio_line(f"PPO peak RSS at {bc.params_label(big_cfg)}, ours full fine-tuning",
                                big["full"]["peak"], big["trl"]["peak"]))
    return {"eps": eps, "mem": mem}


if __name__ == "__main__":
    main()
