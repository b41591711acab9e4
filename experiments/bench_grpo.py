"""GRPO throughput: TRL 1.12's ``GRPOTrainer`` against our ``rlhf_jax.train`` GRPO (one frozen base
+ adapter, or full fine-tuning over the frozen base) on the SAME random Llama checkpoint (width
256, 4 blocks, the toy world's ~410-word vocabulary) and the same prompts: ``P = 2`` prompts of
exactly 128 tokens per step, ``G = 8`` completions each (16 episodes), exactly 64 completion
tokens (no early stop on either side: ours ``eos_ids=()``, TRL ``eos_token_id=None``), temperature
1, beta 0.04 with the k3 KL term (both sides run the reference pass), TRL's default ``dapo`` loss
and group std scaling, one optimizer update per step (``num_iterations=1``: neither side computes
old log-probs), entropy logged on both sides, float32, no gradient checkpointing. The reward is
the same Python function on both sides (the share of one word).

Rows: TRL full fine-tuning (its default: policy + a reference copy), TRL with a PEFT LoRA r=8
(the reference is the base with the adapter disabled), ours LoRA r=8 (the library's design) and
ours full fine-tuning (a trainable copy over the frozen base). Ratios: ours LoRA / TRL LoRA and
ours full / TRL full (like for like), ours LoRA / TRL full (each library's usual set-up).

Method as in ``bench_ppo.py``: everything in ONE process; our steps run inside a TRL step-end
callback, outside TRL's timed span, so the sides alternate under the same machine load;
episodes/s = 16 / median step time after the warm-up step. Generation is timed apart (ours: the
policy's sampler once more per step; TRL: its ``_generate_single_turn`` wrapped), so the update's
share is the rest of the step. TRL's ``gc.collect()`` per step cannot scan our objects
(``gc.freeze()``).

    python experiments/bench_grpo.py            # full run (CPU, ~10 minutes on 2 cores)
    python experiments/bench_grpo.py --quick    # 1 + 2 steps
    python experiments/bench_grpo.py --tiny     # smoke test: tiny model, seconds
    python experiments/bench_grpo.py --gpu      # accelerator: ours only, 0.5B-class bf16 model
"""

from __future__ import annotations

import argparse
import copy
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


@dataclasses.dataclass(frozen=True)
class Setup:
    prompts: int = 2  # per step
    group: int = 8
    prompt_len: int = 128  # tokens, BOS included
    response: int = 64
    rank: int = 8
    beta: float = 0.04
    warmup: int = 1
    steps: int = 5
    lr: float = 1e-6

    @property
    def episodes(self) -> int:
        return self.prompts * self.group


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_common_args(p)
    p.add_argument("--variants", default="trl_full,trl_lora,lora,full",
                   help="runs, comma separated: trl_full, trl_lora (TRL + PEFT LoRA), lora, full (ours)")
    return p.parse_args(argv)


def setup_of(args) -> Setup:
    s = Setup()
    if args.tiny:
        s = dataclasses.replace(s, prompts=1, group=2, prompt_len=8, response=4, rank=4, steps=1)
    elif args.quick:
        s = dataclasses.replace(s, steps=2)
    if args.gpu and not args.tiny:
        s = dataclasses.replace(s, prompts=8, rank=16)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    return s


def reward_fn(prompts, completions, **kwargs):
    """The share of the word "the" in the completion (a cheap verifier; TRL passes extra kwargs)."""
    return [c.split().count("the") / max(1, len(c.split())) for c in completions]


def make_prompts(tok, n: int, length: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """``n`` texts of random vocabulary words that tokenise to exactly ``length`` ids (BOS first),
    and those ids: TRL gets the texts, ours the ids (the same tokens)."""
    rng = np.random.default_rng(seed)
    vocab = [w for w, i in tok.get_vocab().items() if i > 3 and w.isalpha()]
    texts, ids = [], []
    for _ in range(n):
        text = " ".join(rng.choice(vocab, size=length - 1))
        got = tok(text)["input_ids"]
        if len(got) != length:
            raise RuntimeError(f"a {length - 1}-word prompt tokenised to {len(got)} ids")
        texts.append(text)
        ids.append(got)
    return texts, ids


# --------------------------------------------------------------------------------------------
# our side


class OursGRPO:
    """Our GRPO one step at a time from the pieces ``train_grpo`` runs (:func:`prepare_grpo`),
    the step jitted with the state donated, as :func:`rlhf_jax.train.fit` does."""

    def __init__(self, model_config, base, tokenizer, prompt_ids, config):
        import jax

        from rlhf_jax.train import prepare_grpo

        self.base, self.config = base, config
        self.run = prepare_grpo(model_config, base, tokenizer, prompt_ids, reward_fn, config)
        self.state = self.run.state
        self.step_fn = jax.jit(self.run.algorithm.step, donate_argnums=0)

    def train_step(self, i: int) -> float:
        """One whole step (generation + scoring + jitted update), blocked; its seconds."""
        import jax

        from rlhf_jax.train import FitContext

        t0 = time.perf_counter()
        batch, _ = self.run.batches(i, FitContext(self.state, self.base, None))
        self.state, m = self.step_fn(self.state, self.base, batch)
        jax.block_until_ready((self.state, m))
        return time.perf_counter() - t0

    def generation_time(self, i: int) -> float:
        """Step ``i``'s generation alone, once more with the current policy."""
        import jax

        from rlhf_jax.lora import model_variables
        from rlhf_jax.train import batch_indices

        p = self.run.prompts.batch
        idx = np.repeat(batch_indices(i, p.tokens.shape[0], self.config.batch_size, self.config.run.seed),
                        self.config.group_size)
        key = jax.random.fold_in(jax.random.fold_in(self.state.rng, i), 0)
        t0 = time.perf_counter()
        jax.block_until_ready(self.run.sampler(model_variables(self.base, self.state.params), p.tokens[idx],
                                               p.mask[idx], key))
        return time.perf_counter() - t0


def make_ours(variant: str, cfg, base, tok, prompt_ids, s: Setup) -> OursGRPO:
    from rlhf_jax.lora import LoraConfig
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.train import GRPOConfig, OptimConfig, RunConfig

    config = GRPOConfig(policy_lora=LoraConfig(rank=s.rank, alpha=2.0 * s.rank) if variant == "lora" else None,
                        batch_size=s.prompts, group_size=s.group, kl_coef=s.beta, kl_estimator="k3",
                        loss_type="dapo", scale_rewards="group",
                        sampling=SamplingConfig(max_new_tokens=s.response, temperature=1.0, eos_ids=()),
                        optim=OptimConfig(learning_rate=s.lr),
                        run=RunConfig(progress=False, tensorboard=False, max_steps=10 ** 6))
    return OursGRPO(cfg, base, tok, prompt_ids, config)


# --------------------------------------------------------------------------------------------
# TRL's side


def make_trl(variant: str, ckpt, tok, texts, s: Setup, total_steps: int, out_dir: str, callbacks=()):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    bc.hf_quiet()
    peft = None
    if variant == "trl_lora":
        from peft import LoraConfig

        peft = LoraConfig(r=s.rank, lora_alpha=2 * s.rank, target_modules="all-linear", lora_dropout=0.0,
                          task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=s.episodes, num_generations=s.group,
                      steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
                      max_completion_length=s.response, temperature=1.0, top_p=1.0, top_k=0, beta=s.beta,
                      loss_type="dapo", scale_rewards="group", learning_rate=s.lr, max_steps=total_steps,
                      generation_kwargs={"eos_token_id": None}, report_to="none", save_strategy="no",
                      logging_steps=1, use_cpu=True, seed=0, gradient_checkpointing=False, bf16=False,
                      disable_tqdm=True, dataloader_num_workers=0, log_completions=False, shuffle_dataset=False)
    # TRL cuts each completion after the tokenizer's EOS id even when generation does not stop there:
    # give its tokenizer an EOS the model cannot emit (an id past the model's vocabulary), so every
    # completion keeps its 64 tokens, as ours (eos_ids=()) does
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"eos_token": "<never>"})
    assert tok.eos_token_id >= model.config.vocab_size
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=Dataset.from_dict(
        {"prompt": texts}), processing_class=tok, peft_config=peft, callbacks=list(callbacks))
    bc.drop_printer(trainer)
    return trainer


class TRLGenerationTimer:
    """Times the trainer's generation call (``_generate_single_turn``) and counts its tokens."""

    def __init__(self, trainer):
        self.times: list[float] = []
        self.lengths: list[float] = []
        orig = trainer._generate_single_turn

        def timed(*a, **k):
            t0 = time.perf_counter()
            out = orig(*a, **k)
            self.times.append(time.perf_counter() - t0)
            self.lengths.append(float(np.mean([len(c) for c in out[0]])))
            return out

        trainer._generate_single_turn = timed


def grpo_flops(cfg, s: Setup, c: int) -> float:
    """Model FLOPs of one step (attention scores left out): generation (prefill + decode with
    logits), the reference forward, the policy's forward + backward (``c`` = 6 full, 4 LoRA)."""
    n, nh = bc.matmul_params(cfg), bc.matmul_params(cfg, lm_head=False)
    t, b = s.prompt_len + s.response, s.episodes
    gen = 2 * nh * b * (t - 1) + 2 * cfg.vocab_size * cfg.hidden_size * b * s.response
    return float(gen + 2 * b * t * n + c * b * t * n)


# --------------------------------------------------------------------------------------------
# GPU mode: ours only


def gpu_main(args, s: Setup):

    cfg, peak, how, base = bc.gpu_start(args.tiny)
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(args.world_dir or Path(root) / "world")
        tok = world.tokenizer
        rng = np.random.default_rng(0)
        ids = [[1] + rng.integers(4, min(cfg.vocab_size, len(tok)), size=s.prompt_len - 1).tolist()
               for _ in range(4 * s.prompts)]
        trainer = make_ours("lora", cfg, base, tok, ids, s)
        times = [trainer.train_step(i) for i in range(s.warmup + s.steps)]
        gen = [trainer.generation_time(i) for i in range(s.warmup, s.warmup + s.steps)]
    step, g = bc.median(times[s.warmup:]), bc.median(gen)
    flops = grpo_flops(cfg, s, 4)
    print(f"\nmatmul limit: {peak / 1e12:.1f} TFLOP/s ({how})\n")
    bc.print_table(["model", "episodes", "episodes/s", "s/step", "generation s/step", "compile s", "model TFLOP/s",
                    "% of matmul"],
                   [[f"{bc.params_label(cfg)} {cfg.dtype}, LoRA r={s.rank}", s.episodes, f"{s.episodes / step:.1f}",
                     f"{step:.3f}", f"{g:.3f}", f"{times[0] - step:.1f}", f"{flops / step / 1e12:.2f}",
                     f"{100 * flops / step / peak:.1f}%"]])
    print(f"ratio gpu GRPO: {s.episodes / step:.1f} episodes/s, generation {100 * g / step:.0f}% of the step, "
          f"{100 * flops / step / peak:.1f}% of the bf16 matmul rate")
    return {"eps": s.episodes / step}


# --------------------------------------------------------------------------------------------


NAMES = {"trl_full": "TRL 1.12 GRPOTrainer, full fine-tuning (policy + reference copy)",
         "trl_lora": "TRL 1.12 GRPOTrainer + PEFT LoRA (reference = adapter off)",
         "lora": "ours, LoRA (one base; reference = adapter off)",
         "full": "ours, full fine-tuning (trainable copy over the frozen base)"}


def main(argv=None):
    args = parse_args(argv)
    s = setup_of(args)
    if args.gpu:
        return gpu_main(args, s)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(NAMES)
    if unknown or not any(v.startswith("trl") for v in variants) or not any(not v.startswith("trl")
                                                                             for v in variants):
        raise SystemExit(f"--variants: one TRL run and one of ours at least, from {sorted(NAMES)}")
    trl_runs = [v for v in variants if v.startswith("trl")]
    ours_runs = [v for v in variants if not v.startswith("trl")]
    bc.start_torch(args.omp_wait_policy)
    rates = bc.matmul_rate()
    total = s.warmup + s.steps
    with tempfile.TemporaryDirectory() as root:
        world_dir = Path(args.world_dir or Path(root) / "world")
        world = bc.build_world_dir(world_dir)
        tok = bc.load_world_tokenizer(world_dir)
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), max_positions=256, **shape)
        cfg, base, _ = bc.load_cpu_model(ckpt, args.layers)
        # enough prompts that no step repeats one; TRL visits them in order (shuffle off), ours in
        # its own seeded order: the same prompt set and lengths, which is what the cost depends on
        texts, ids = make_prompts(tok, s.prompts * total, s.prompt_len)
        ours = {v: make_ours(v, cfg, base, tok, ids, s) for v in ours_runs}
        rec = {v: {"t": [], "gen": []} for v in [*trl_runs, *ours_runs]}
        print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} blocks, "
              f"vocab {cfg.vocab_size}); {s.prompts} prompts x G = {s.group} = {s.episodes} episodes per step, "
              f"prompt {s.prompt_len} tokens, completion {s.response}; {s.warmup} warm-up + {s.steps} measured "
              f"steps", flush=True)
        for j, tv in enumerate(trl_runs):
            def between(i, first=(j == 0)):  # after TRL's step i: our step i (during the first TRL run)
                if not first:
                    return
                for v, tr in ours.items():
                    rec[v]["t"].append(tr.train_step(i))
                    if i >= s.warmup:
                        rec[v]["gen"].append(tr.generation_time(i))

            clock = bc.step_clock(between)
            with tempfile.TemporaryDirectory() as out:
                trainer = make_trl(tv, ckpt, tok, texts, s, total, out, callbacks=[clock])
                gen = TRLGenerationTimer(trainer)
                gc.collect()
                gc.freeze()  # TRL's per-step gc.collect() must not scan our objects
                trainer.train()
                gc.unfreeze()
            rec[tv]["t"], rec[tv]["gen"] = clock.times, gen.times[s.warmup:]
            if any(abs(x - s.response) > 0 for x in gen.lengths):
                print(f"note: {tv} generated {np.mean(gen.lengths):.1f} tokens on average, not {s.response}")
            del trainer
    rates += bc.matmul_rate()
    peak = bc.median(rates)
    print(f"\nfloat32 matmul rate (jitted 1024^3, median of {len(rates)}): {peak / 1e9:.1f} GFLOP/s; "
          f"load average at end {os.getloadavg()[0]:.1f}\n")
    eps, table = {}, []
    for v, r in rec.items():
        med = bc.median(r["t"][s.warmup:])
        eps[v] = s.episodes / med
        g = bc.median(r["gen"])
        f = grpo_flops(cfg, s, 4 if v in ("lora", "trl_lora") else 6) / med
        table.append([NAMES[v], f"{eps[v]:.2f}", f"{med:.2f}", f"{g:.2f}", f"{med - g:.2f}",
                      f"{r['t'][0] - med:.1f}", f"{f / 1e9:.1f}", f"{100 * f / peak:.1f}%"])
    bc.print_table(["run", "episodes/s", "s/step", "generation s/step", "rest (scoring + update) s/step",
                    "compile / warm-up s", "model GFLOP/s", "% of matmul rate"], table)
    print("seconds per step (the first is the warm-up):")
    for v, r in rec.items():
        print(bc.steps_line(NAMES[v], r["t"]))
    print()
    pairs = [("lora", "trl_lora", "ours LoRA vs TRL + PEFT LoRA"), ("full", "trl_full", "ours full vs TRL full"),
             ("lora", "trl_full", "ours LoRA vs TRL full (each library's usual set-up)")]
    for a, b, what in pairs:
        if a in eps and b in eps:
            print(bc.ratio_line(f"GRPO episodes/s, {what}", eps[a], eps[b], target=1.5))
    for a, b in (("lora", "trl_lora"), ("full", "trl_full")):
        if a in rec and b in rec and rec[a]["gen"] and rec[b]["gen"]:
            ga, gb = bc.median(rec[a]["gen"]), bc.median(rec[b]["gen"])
            ua = bc.median(rec[a]["t"][s.warmup:]) - ga
            ub = bc.median(rec[b]["t"][s.warmup:]) - gb
            print(f"where the time goes, {a} vs {b}: generation {ga:.2f} vs {gb:.2f} s ({gb / ga:.2f}x), "
                  f"scoring + update {ua:.2f} vs {ub:.2f} s ({ub / max(ua, 1e-9):.2f}x)")
    if bc.busy_warning():
        print(bc.busy_warning())
    return {"eps": eps}


if __name__ == "__main__":
    main()
