"""Reward-model training throughput: TRL 1.12's ``RewardTrainer`` against our reward step
(``rlhf_jax.train.make_reward``, jitted once with donation exactly as ``train_reward_model``
does) on the SAME random Llama checkpoint (width 256, 4 blocks, the toy world's ~410-word
vocabulary; TRL: ``LlamaForSequenceClassification`` with one label) and the SAME token sequences:
1,024 preference pairs built from the toy world's SFT corpus (two completions of the same prompt,
chosen / rejected), tokenised once by our ``encode_pairs`` and handed to TRL pre-tokenised
(``chosen_ids`` / ``rejected_ids``). Batch 16 pairs (32 sequences), Bradley-Terry loss, AdamW with
gradient clipping 1.0, float32, no gradient checkpointing (TRL's default is on; we turn it off).

Padding: ours cuts each batch to its longest sequence rounded up to a multiple of 8 (as
``train_reward_model`` does: ``RewardConfig.pad_multiple``; a few compiled shapes, all compiled
during the warm-up step); TRL pads each batch to its own longest sequence. Pairs/s = 16 / median step time.

Rows: TRL full fine-tuning (its default); ours full fine-tuning (``RewardConfig(lora=None)``, like
for like); ours LoRA r=8 (``RewardConfig``'s default: the reward adapter over the shared base).
All three run in ONE process, alternating step by step (our steps run inside a TRL step-end
callback, outside TRL's timed span); the first step is left out of the medians and its excess is
reported as compile / warm-up.

Threads: torch gets every usable core, as XLA's CPU client does; ``OMP_WAIT_POLICY`` is left
unset (torch out of the box). On a busy machine torch's OpenMP steps slow down erratically; the
script then prints a warning, and ``--omp-wait-policy PASSIVE`` gives steadier numbers that
handicap torch (~1.5x when idle). ``taskset -c 0 python ...`` compares one core each.

Model FLOPs (attention-score FLOPs left out): F = c * N_h * 2B * T per step with N_h the matmul
parameters of the blocks (a reward model reads hidden states: no LM head, and the embedding is a
lookup), 2B * T the positions computed (padding included), c = 6 for full fine-tuning, c = 4 for
LoRA (no weight gradient for the frozen base). Shown next to this machine's float32 matmul rate
measured in the same run (jitted 1024^3, median of 10 at the start and 10 at the end).

Long prompts (``--long-prompt``): 256 pairs, each a 256-token prompt and two 64-token completions
(windows of the corpus's token stream, as in ``bench_dpo.py``), batch 8. Ours holds each prompt
once (``encode_preferences``' layout: ``prompt_ids`` + completions) and computes its keys and
values once per pair, both completions attending to them (``rlhf_jax.rollout.grouped_hidden``:
256 + 2 x 64 = 384 positions per pair); TRL scores ``prompt + chosen`` and ``prompt + rejected``
as two whole sequences (2 x 320 = 640 positions). Model FLOPs then count those positions.

    python experiments/bench_reward.py            # full run (~2 minutes on 2 cores)
    python experiments/bench_reward.py --long-prompt   # 256-token prompts, each computed once by ours
    python experiments/bench_reward.py --quick    # fewer steps
    python experiments/bench_reward.py --gpu      # accelerator: ours only, 0.5B-class bf16 model
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setup:
    batch: int = 16
    pairs: int = 1024
    rank: int = 8
    warmup: int = 1
    steps: int = 10
    lr: float = 1e-4
    gpu_length: int = 512
    prompt: int = 0
    """``--long-prompt``: prompt tokens per pair (each prompt computed once by ours); 0: the corpus pairs."""
    completion: int = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_common_args(p)
    p.add_argument("--long-prompt", action="store_true",
                   help="256-token prompts + two 64-token completions, each prompt computed once by ours")
    return p.parse_args(argv)


def setup_of(args) -> Setup:
    s = Setup()
    if args.tiny:
        s = dataclasses.replace(s, batch=4, pairs=32, rank=4, steps=1, gpu_length=32)
    elif args.quick:
        s = dataclasses.replace(s, steps=3)
    if args.gpu and not args.tiny:
        s = dataclasses.replace(s, batch=8, rank=16)
    if args.long_prompt:
        s = dataclasses.replace(s, batch=8, pairs=256, prompt=16 if args.tiny else 256,
                                completion=8 if args.tiny else 64)
        if args.tiny:
            s = dataclasses.replace(s, batch=2, pairs=8)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    return s


class OursReward(bc.TrimmedStepRunner):
    """Our reward step on fixed pair arrays: full fine-tuning (``lora=None``: the trainable tree
    is a copy of the base + the score head) or a LoRA adapter + head over the frozen base, jitted
    once (``rlhf_jax.sharding.jit_step``, state donated) as ``train_reward_model`` does."""

    def __init__(self, cfg, base, arrays, *, batch: int, lr: float, steps: int, lora=None, seed: int = 0):
        import jax

        from rlhf_jax.sharding import jit_step
        from rlhf_jax.train import OptimConfig, RewardConfig, make_optimizer, make_reward

        rc = RewardConfig(lora=lora, batch_size=batch, optim=OptimConfig(learning_rate=lr))
        algo = make_reward(cfg, make_optimizer(rc.optim), rc)
        self.state = algo.init(jax.random.PRNGKey(seed), base)
        self.step_fn = jit_step(algo.step, None, self.state)
        self.extra = base if lora is not None else None  # full fine-tuning: the step needs no base
        self.batches = (bc.GroupedSteps(arrays, batch=batch, seed=seed, steps=steps) if "prompt_ids" in arrays
                        else bc.TrimmedSteps(arrays, batch=batch, seed=seed, steps=steps))


def long_prompt_arrays(world, s: Setup) -> dict:
    """``s.pairs`` pairs of a ``s.prompt``-token prompt and two ``s.completion``-token completions
    (``bench_dpo.token_pairs``), each prompt once: ``prompt_ids``/``prompt_mask`` ``[N, P]`` and
    ``input_ids``/``attention_mask`` ``[N, 2, C]`` (the layout ``encode_preferences`` gives)."""
    from bench_dpo import Setup as DPOSetup
    from bench_dpo import token_pairs

    from rlhf_jax.train.grouped_batches import layout_groups

    rows = token_pairs(world.tokenizer, [e.prompt + " " + e.completion for e in world.corpus],
                       DPOSetup(pairs=s.pairs, prompt=s.prompt, completion=s.completion))
    arrays = layout_groups([r["prompt_ids"] for r in rows], [[r["chosen_ids"], r["rejected_ids"]] for r in rows],
                           pad_id=0)
    return dict(arrays, margin=np.zeros(len(rows), np.float32))


def trl_sequences(arrays: dict) -> tuple[list, list]:
    """Chosen and rejected whole sequences (real tokens only) for TRL, from either layout."""
    real = lambda ids, mask: ids[mask > 0].tolist()  # noqa: E731  (strip our padding)
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    prompt = ([real(p, m) for p, m in zip(arrays["prompt_ids"], arrays["prompt_mask"])] if "prompt_ids" in arrays
              else [[] for _ in range(len(ids))])
    return tuple([prompt[i] + real(ids[i, j], mask[i, j]) for i in range(len(ids))] for j in (0, 1))


def pair_arrays(world, s: Setup) -> dict:
    """``s.pairs`` (prompt, chosen, rejected) rows: two completions of one prompt from the corpus,
    encoded by ``encode_pairs`` (left padded to the longest sequence)."""
    from rlhf_jax.feedback import BatchConfig, encode_pairs

    by_prompt = defaultdict(list)
    for ex in world.corpus:
        by_prompt[ex.prompt].append(ex.completion)
    rows = []
    for prompt, comps in sorted(by_prompt.items()):
        for a, b in zip(comps[0::2], comps[1::2]):
            if a != b:
                rows.append({"prompt": prompt, "chosen": a, "rejected": b})
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:s.pairs]]
    tok = world.tokenizer
    longest = max(len(tok(r["prompt"] + " " + c)["input_ids"]) for r in rows for c in (r["chosen"], r["rejected"]))
    batch, report = encode_pairs(tok, rows, config=BatchConfig(max_length=longest))
    assert report.skipped == 0
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "margin": batch.margin}


def make_trl(ckpt, tok, arrays, s: Setup, total_steps: int, out_dir: str, callbacks=()):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    bc.hf_quiet()
    chosen, rejected = trl_sequences(arrays)
    ds = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    model = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1, dtype=torch.float32)
    args = RewardConfig(output_dir=out_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=1,
                        max_steps=total_steps, learning_rate=s.lr,
                        max_length=max(map(len, chosen + rejected)),
                        gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none",
                        save_strategy="no", logging_steps=10 ** 6, disable_tqdm=True, dataloader_num_workers=0,
                        seed=0, max_grad_norm=1.0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                            callbacks=list(callbacks))
    bc.drop_printer(trainer)
    return trainer


def gpu_main(args, s: Setup):
    from rlhf_jax.lora import LoraConfig

    cfg, peak, how, base = bc.gpu_start(args.tiny)
    b, t = s.batch, s.gpu_length
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (4 * b, 2, t)).astype(np.int32)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "margin": np.zeros(4 * b, np.float32)}
    n = bc.matmul_params(cfg, lm_head=False)
    rows = []
    runs = (("full fine-tuning", None, 6), (f"LoRA r={s.rank}", LoraConfig(rank=s.rank), 4))
    for name, lora, c in runs[:1] if args.tiny else runs:  # --tiny: the code path only
        run = OursReward(cfg, base, arrays, batch=b, lr=s.lr, lora=lora, steps=s.warmup + s.steps)
        times = [run(i) for i in range(s.warmup + s.steps)]
        med = bc.median(times[s.warmup:])
        f = c * n * 2 * b * t / med
        rows.append([f"{bc.params_label(cfg)} {cfg.dtype}, {name}", f"{b} pairs x {t}", f"{b / med:,.1f}",
                     f"{med:.3f}", f"{times[0] - med:.1f}", f"{f / 1e12:.2f}", f"{100 * f / peak:.1f}%"])
        del run
    print(f"\nmatmul limit: {peak / 1e12:.1f} TFLOP/s ({how})\n")
    bc.print_table(["run", "batch", "pairs/s", "s/step", "compile s", "model TFLOP/s", "% of matmul (MFU)"], rows)
    for r in rows:
        print(f"ratio gpu reward {r[0]}: {r[2]} pairs/s, MFU {r[-1]}")


def main(argv=None):
    args = parse_args(argv)
    s = setup_of(args)
    if args.gpu and args.long_prompt:
        raise SystemExit("bench_reward: --long-prompt is a CPU comparison with TRL; drop --gpu or --long-prompt")
    if args.gpu:
        return gpu_main(args, s)
    torch, threads = bc.start_torch(args.omp_wait_policy)
    from rlhf_jax.lora import LoraConfig
    rates = bc.matmul_rate()
    total = s.warmup + s.steps
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(args.world_dir or Path(root) / "world")
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), max_positions=512 if s.prompt
                                   else 128, **shape)
        cfg, base, _ = bc.load_cpu_model(ckpt, args.layers)
        arrays = long_prompt_arrays(world, s) if s.prompt else pair_arrays(world, s)
        ours = {"full": OursReward(cfg, base, arrays, batch=s.batch, lr=s.lr, steps=total),
                "lora": OursReward(cfg, base, arrays, batch=s.batch, lr=s.lr, steps=total,
                                   lora=LoraConfig(rank=s.rank, alpha=2.0 * s.rank))}
        widths = ours["full"].batches.mean_width(s.warmup)
        # positions per pair: ours (padding included) and TRL's (corpus pairs: its padding unknown here)
        positions = {"ours": widths[0] + 2 * widths[1] if s.prompt else 2 * widths,
                     "trl": 2 * (s.prompt + s.completion) if s.prompt else None}
        times = {k: [] for k in ours}

        def between(i):
            for k, run in ours.items():
                times[k].append(run(i))

        clock = bc.step_clock(between)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trl(ckpt, world.tokenizer, arrays, s, total, out, callbacks=[clock])
            if s.prompt:
                what = (f"{s.pairs} pairs of a {s.prompt}-token prompt and two {s.completion}-token completions "
                        f"(ours: {positions['ours']:.0f} positions per pair, the prompt once; TRL: {positions['trl']})")
            else:
                real = float(arrays["attention_mask"].sum(-1).mean())
                what = (f"{arrays['input_ids'].shape[0]} pairs, mean {real:.1f} real tokens per sequence, ours padded "
                        f"to {widths:.1f} on average (widths {sorted(set(ours['full'].batches.widths))})")
            print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} "
                  f"blocks, vocab {cfg.vocab_size}); {what}; batch {s.batch} pairs; {s.warmup} warm-up + "
                  f"{s.steps} measured steps", flush=True)
            gc.collect()
            gc.freeze()
            trainer.train()
            gc.unfreeze()
        times["trl"] = clock.times
    rates += bc.matmul_rate()
    peak = bc.median(rates)
    print(f"\nfloat32 matmul rate (jitted 1024^3, median of {len(rates)}): {peak / 1e9:.1f} GFLOP/s; "
          f"load average at end {os.getloadavg()[0]:.1f}\n")
    n = bc.matmul_params(cfg, lm_head=False)
    names = {"trl": "TRL 1.12 RewardTrainer, full fine-tuning", "full": "ours, full fine-tuning",
             "lora": f"ours, LoRA r={s.rank} (default)"}
    c = {"trl": 6, "full": 6, "lora": 4}
    pps, rows = {}, []
    for k in ("trl", "full", "lora"):
        med = bc.median(times[k][s.warmup:])
        pps[k] = s.batch / med
        pos = positions["trl" if k == "trl" else "ours"]
        f = None if pos is None else c[k] * n * s.batch * pos / med
        rows.append([names[k], f"{pps[k]:,.1f}", f"{med * 1e3:.1f}", f"{times[k][0] - med:.1f}",
                     "-" if f is None else f"{f / 1e9:.1f}", "-" if f is None else f"{100 * f / peak:.1f}%"])
    bc.print_table(["run", "pairs/s", "ms/step", "compile / warm-up s", "model GFLOP/s", "% of matmul rate"], rows)
    print("seconds per step (the first is the warm-up):")
    for k in ("trl", "full", "lora"):
        print(bc.steps_line(names[k], times[k]))
    print()
    kind = f"long-prompt ({s.prompt} + 2 x {s.completion}) " if s.prompt else ""
    print(bc.ratio_line(f"reward {kind}pairs/s, ours full fine-tuning", pps["full"], pps["trl"], target=1.5))
    print(bc.ratio_line(f"reward {kind}pairs/s, ours LoRA (default)", pps["lora"], pps["trl"], target=1.5))
    return {"pps": pps}


if __name__ == "__main__":
    main()
