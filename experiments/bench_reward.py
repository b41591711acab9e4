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

    python experiments/bench_reward.py            # full run (~2 minutes on 2 cores)
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_common_args(p)
    return p.parse_args(argv)


def setup_of(args) -> Setup:
    s = Setup()
    if args.tiny:
        s = dataclasses.replace(s, batch=4, pairs=32, rank=4, steps=1, gpu_length=32)
    elif args.quick:
        s = dataclasses.replace(s, steps=3)
    if args.gpu and not args.tiny:
        s = dataclasses.replace(s, batch=8, rank=16)
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
        self.batches = bc.TrimmedSteps(arrays, batch=batch, seed=seed, steps=steps)


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
    real = lambda ids, mask: ids[mask > 0].tolist()  # noqa: E731  (strip our left padding)
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    ds = Dataset.from_dict({"chosen_ids": [real(ids[i, 0], mask[i, 0]) for i in range(len(ids))],
                            "rejected_ids": [real(ids[i, 1], mask[i, 1]) for i in range(len(ids))]})
    model = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1, dtype=torch.float32)
    args = RewardConfig(output_dir=out_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=1,
                        max_steps=total_steps, learning_rate=s.lr, max_length=ids.shape[-1],
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
    if args.gpu:
        return gpu_main(args, s)
    torch, threads = bc.start_torch(args.omp_wait_policy)
    from rlhf_jax.lora import LoraConfig
    from rlhf_jax.model import load_pretrained
    rates = bc.matmul_rate()
    total = s.warmup + s.steps
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(args.world_dir or Path(root) / "world")
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), **shape)
        cfg, base, _ = load_pretrained(ckpt, tokenizer=False)
        arrays = pair_arrays(world, s)
        ours = {"full": OursReward(cfg, base, arrays, batch=s.batch, lr=s.lr, steps=total),
                "lora": OursReward(cfg, base, arrays, batch=s.batch, lr=s.lr, steps=total,
                                   lora=LoraConfig(rank=s.rank, alpha=2.0 * s.rank))}
        t_pad = ours["full"].batches.mean_width(s.warmup)
        times = {k: [] for k in ours}

        def between(i):
            for k, run in ours.items():
                times[k].append(run(i))

        clock = bc.step_clock(between)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trl(ckpt, world.tokenizer, arrays, s, total, out, callbacks=[clock])
            real = float(arrays["attention_mask"].sum(-1).mean())
            print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} "
                  f"blocks, vocab {cfg.vocab_size}); {arrays['input_ids'].shape[0]} pairs, mean {real:.1f} real "
                  f"tokens per sequence, ours padded to "
                  f"{t_pad:.1f} on average (widths {sorted(set(ours['full'].batches.widths))}); batch {s.batch} pairs; {s.warmup} warm-up + "
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
    c = {"full": 6, "lora": 4}
    pps, rows = {}, []
    for k in ("trl", "full", "lora"):
        med = bc.median(times[k][s.warmup:])
        pps[k] = s.batch / med
        f = c[k] * n * 2 * s.batch * t_pad / med if k in c else None
        rows.append([names[k], f"{pps[k]:,.1f}", f"{med * 1e3:.1f}", f"{times[k][0] - med:.1f}",
                     "-" if f is None else f"{f / 1e9:.1f}", "-" if f is None else f"{100 * f / peak:.1f}%"])
    bc.print_table(["run", "pairs/s", "ms/step", "compile / warm-up s", "model GFLOP/s", "% of matmul rate"], rows)
    print("seconds per step (the first is the warm-up):")
    for k in ("trl", "full", "lora"):
        print(bc.steps_line(names[k], times[k]))
    print()
    print(bc.ratio_line("reward pairs/s, ours full fine-tuning", pps["full"], pps["trl"], target=1.5))
    print(bc.ratio_line("reward pairs/s, ours LoRA (default)", pps["lora"], pps["trl"], target=1.5))
    return {"pps": pps}


if __name__ == "__main__":
    main()
