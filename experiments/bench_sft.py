"""SFT throughput: TRL 1.12's ``SFTTrainer`` against our SFT step (``rlhf_jax.train.make_sft``,
jitted once with donation exactly as ``train_sft`` does) on the SAME random Llama checkpoint
(width 256, 4 blocks, the toy world's ~410-word vocabulary) and the SAME token sequences: 2,048
prompt + completion examples of the toy world's SFT corpus, tokenised once by our ``encode_sft``
and handed to TRL pre-tokenised (``input_ids`` + ``completion_mask``, completion-only loss). Batch
32 sequences, AdamW with gradient clipping 1.0, float32, no gradient checkpointing (TRL's default
is on; we turn it off, as we do not rematerialise either), no packing.

Padding: ours cuts each batch to its longest sequence rounded up to a multiple of 8 (as
``train_sft`` does: ``SFTConfig.pad_multiple``; a few compiled shapes, all compiled during the
warm-up step); TRL pads each batch to its own longest sequence. Tokens/s counts REAL tokens:
32 x the mean real length of the data, the same for both sides, divided by the median step time.

Rows: TRL full fine-tuning; ours full fine-tuning (like for like); ours LoRA r=8 (``SFTConfig``'s
``lora``). All three run in ONE process, alternating step by step (our steps run inside a TRL
step-end callback, outside TRL's timed span); the first step is left out of the medians and its
excess is reported as compile / warm-up.

Threads: torch gets every usable core, as XLA's CPU client does; ``OMP_WAIT_POLICY`` is left
unset (torch out of the box). On a busy machine torch's OpenMP steps slow down erratically; the
script then prints a warning, and ``--omp-wait-policy PASSIVE`` gives steadier numbers that
handicap torch (~1.5x when idle). ``taskset -c 0 python ...`` compares one core each.

Model FLOPs (attention-score FLOPs left out): F = c * N * B * T per step with N the matmul
parameters (all but the input embedding lookup), B * T the positions computed (padding included),
c = 6 for full fine-tuning, c = 4 for LoRA (forward + gradient through the activations; the
frozen base gets no weight gradient). Shown next to this machine's float32 matmul rate measured in
the same run (jitted 1024^3, median of 10 at the start and 10 at the end).

Packing (``--packing``): a length-skewed data set (example lengths drawn from a log-normal, median
48 tokens, sigma 0.9, clipped to [8, 256]; random token ids, loss on every token), full fine-tuning
of the same checkpoint three ways in one process, alternating step by step: ours unpacked (one
example per row, each batch cut to its longest example rounded up to 8), ours packed
(``SFTConfig(packing=True)``: best-fit rows of 256 tokens with segment ids, no attention across
examples) and TRL's ``SFTTrainer(packing=True)`` (its default ``bfd`` strategy: best-fit rows of 256
tokens, padding-free, position ids restarting per example, which ``transformers``' SDPA attention
turns into a block-diagonal mask over the flattened batch). Each step holds about the same number
of real tokens on every side (8 packed rows; unpacked: as many examples as fill 8 rows on average).
Tokens/s counts real (non-padding) tokens.

    python experiments/bench_sft.py            # full run (~2 minutes on 2 cores)
    python experiments/bench_sft.py --quick    # fewer steps
    python experiments/bench_sft.py --packing  # the packing comparison
    python experiments/bench_sft.py --gpu      # accelerator: ours only, 0.5B-class bf16 model
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setup:
    batch: int = 32
    examples: int = 2048
    rank: int = 8
    warmup: int = 1
    steps: int = 10
    lr: float = 1e-4
    gpu_length: int = 512


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_common_args(p)
    p.add_argument("--packing", action="store_true", help="packed vs unpacked vs TRL packing on skewed lengths")
    return p.parse_args(argv)


def setup_of(args) -> Setup:
    s = Setup()
    if args.tiny:
        s = dataclasses.replace(s, batch=4, examples=64, rank=4, steps=1, gpu_length=32)
    elif args.quick:
        s = dataclasses.replace(s, steps=3)
    if args.gpu and not args.tiny:
        s = dataclasses.replace(s, batch=16, rank=16)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    return s


class OursSFT(bc.TrimmedStepRunner):
    """Our SFT step on a fixed data set: full fine-tuning (``lora=None``) or a LoRA adapter over
    the frozen base, jitted once (``rlhf_jax.sharding.jit_step``, state donated) as ``train_sft``
    does; each step takes its rows with ``batch_indices`` and copies them to the device."""

    def __init__(self, cfg, params, data, *, batch: int, lr: float, steps: int, lora=None, seed: int = 0):
        import jax

        from rlhf_jax.sharding import jit_step
        from rlhf_jax.train import OptimConfig, SFTConfig, make_optimizer, make_sft

        config = SFTConfig(lora=lora, batch_size=batch, optim=OptimConfig(learning_rate=lr))
        algo = make_sft(cfg, make_optimizer(config.optim), config)
        self.state = algo.init(jax.random.PRNGKey(seed), params)
        self.step_fn = jit_step(algo.step, None, self.state)
        self.extra = params if lora is not None else None  # full fine-tuning: the step needs no base
        self.batches = bc.TrimmedSteps(data, batch=batch, seed=seed, steps=steps)


def make_trl(ckpt, tok, data, s: Setup, total_steps: int, out_dir: str, callbacks=()):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    bc.hf_quiet()
    ids, lm = [], []
    for row, mask, loss in zip(data.input_ids, data.attention_mask, data.loss_mask):
        keep = mask > 0  # strip our left padding: the same real tokens, TRL pads on the right
        ids.append(row[keep].tolist())
        lm.append(loss[keep].tolist())
    ds = Dataset.from_dict({"input_ids": ids, "completion_mask": lm})
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=1,
                     max_steps=total_steps, learning_rate=s.lr, max_length=data.input_ids.shape[1],
                     completion_only_loss=True, packing=False, padding_free=False, gradient_checkpointing=False,
                     bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=10 ** 6,
                     disable_tqdm=True, dataloader_num_workers=0, seed=0, max_grad_norm=1.0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=list(callbacks))
    bc.drop_printer(trainer)
    return trainer


def sft_data(world, s: Setup):
    from rlhf_jax.train import encode_sft

    order = np.random.default_rng(0).permutation(len(world.corpus))[:s.examples]
    ex = [world.corpus[i] for i in order]
    longest = max(len(world.tokenizer(e.prompt + " " + e.completion)["input_ids"]) for e in ex)
    data, report = encode_sft(world.tokenizer, [e.prompt for e in ex], [e.completion for e in ex],
                              max_length=longest, append_eos=False)  # completions end with </s> already
    assert report.skipped == 0
    return data


def skewed_examples(n: int, vocab: int, *, length: int, median: float = 48.0, sigma: float = 0.9, seed: int = 0):
    """``n`` examples of random token ids (3..vocab) with log-normal lengths clipped to [8, length],
    loss on every token."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(np.exp(rng.normal(np.log(median), sigma, n))), 8, length).astype(int)
    return [(rng.integers(3, vocab, k).tolist(), [1] * k) for k in lengths]


def make_trl_packed(ckpt, tok, examples, *, rows: int, length: int, lr: float, total_steps: int, out_dir: str,
                    callbacks=()):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    bc.hf_quiet()
    ds = Dataset.from_dict({"input_ids": [ids for ids, _ in examples]})
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=rows, gradient_accumulation_steps=1,
                     max_steps=total_steps, learning_rate=lr, max_length=length, packing=True,
                     gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                     logging_steps=10 ** 6, disable_tqdm=True, dataloader_num_workers=0, seed=0, max_grad_norm=1.0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=list(callbacks))
    bc.drop_printer(trainer)
    return trainer


def packing_main(args, s: Setup):
    """Ours packed vs ours unpacked vs TRL packed, on length-skewed examples (module docstring)."""
    from rlhf_jax.train import SFTConfig, layout_examples

    bc.start_torch(args.omp_wait_policy)
    length, rows = (64, 2) if args.tiny else (256, 8)
    total = s.warmup + s.steps
    with tempfile.TemporaryDirectory() as root:
        tok = bc.build_world_dir(args.world_dir or Path(root) / "world").tokenizer
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(tok), max_positions=length, **shape)
        cfg, params, _ = bc.load_cpu_model(ckpt, args.layers)
        examples = skewed_examples(256 if args.tiny else 2048, cfg.vocab_size, length=length)
        lens = np.array([len(x) for x, _ in examples])
        packed, report = layout_examples(examples, SFTConfig(max_length=length, packing=True), 0)
        per_row = float(packed.attention_mask.sum(1).mean())
        batch = max(1, int(round(rows * per_row / lens.mean())))  # unpacked: about the same real tokens per step
        unpacked, _ = layout_examples(examples, SFTConfig(max_length=length), 0)
        ours = {"unpacked": OursSFT(cfg, params, unpacked, batch=batch, lr=s.lr, steps=total),
                "packed": OursSFT(cfg, params, packed, batch=rows, lr=s.lr, steps=total)}
        times = {k: [] for k in ours}

        def between(i):
            for k, run in ours.items():
                times[k].append(run(i))

        clock = bc.step_clock(between)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trl_packed(ckpt, tok, examples, rows=rows, length=length, lr=s.lr, total_steps=total,
                                      out_dir=out, callbacks=[clock])
            trl_rows = trainer.train_dataset["input_ids"]
            trl_per_row = float(np.mean([len(x) for x in trl_rows]))
            print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} "
                  f"blocks); {len(examples)} examples, lengths mean {lens.mean():.1f}, median {np.median(lens):.0f}, "
                  f"p90 {np.percentile(lens, 90):.0f}, max {lens.max()}; ours packed: {report.summary()}; TRL "
                  f"packed {len(trl_rows)} rows ({trl_per_row / length:.1%} filled); {s.warmup} warm-up + "
                  f"{s.steps} measured steps", flush=True)
            gc.collect()
            gc.freeze()
            trainer.train()
            gc.unfreeze()
        times["trl"] = clock.times
    real = {"unpacked": batch * lens.mean(), "packed": rows * per_row, "trl": rows * trl_per_row}
    shape_of = {"unpacked": f"{batch} examples, padded to ~{ours['unpacked'].batches.mean_width(s.warmup):.0f}",
                "packed": f"{rows} rows x {length}", "trl": f"{rows} rows x {length} (flattened)"}
    names = {"trl": "TRL 1.12 SFTTrainer, packing=True (bfd, padding-free)", "unpacked": "ours, unpacked",
             "packed": "ours, packing=True"}
    tps, table = {}, []
    for k in ("trl", "unpacked", "packed"):
        med = bc.median(times[k][s.warmup:])
        tps[k] = real[k] / med
        table.append([names[k], shape_of[k], f"{real[k]:,.0f}", f"{tps[k]:,.0f}", f"{med * 1e3:.1f}"])
    print(f"\n{bc.busy_warning()}")
    bc.print_table(["run", "per step", "real tokens / step", "tokens/s (real)", "ms/step"], table)
    for k in ("trl", "unpacked", "packed"):
        print(bc.steps_line(names[k], times[k]))
    print()
    print(bc.ratio_line("SFT tokens/s on skewed lengths, ours packed", tps["packed"], tps["trl"]))
    print(bc.ratio_line("SFT tokens/s on skewed lengths, ours unpacked", tps["unpacked"], tps["trl"]))
    print(f"packed / unpacked (ours): {tps['packed'] / tps['unpacked']:.2f}x")
    return {"tps": tps}


def gpu_main(args, s: Setup):
    from rlhf_jax.lora import LoraConfig
    from rlhf_jax.train import SFTBatch

    cfg, peak, how, params = bc.gpu_start(args.tiny)
    b, t = s.batch, s.gpu_length
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (4 * b, t)).astype(np.int32)
    data = SFTBatch(ids, np.ones_like(ids), np.ones_like(ids))
    n = bc.matmul_params(cfg)
    rows = []
    runs = (("full fine-tuning", None, 6), (f"LoRA r={s.rank}", LoraConfig(rank=s.rank), 4))
    for name, lora, c in runs[:1] if args.tiny else runs:  # --tiny: the code path only
        run = OursSFT(cfg, params, data, batch=b, lr=s.lr, lora=lora, steps=s.warmup + s.steps)
        times = [run(i) for i in range(s.warmup + s.steps)]
        med = bc.median(times[s.warmup:])
        f = c * n * b * t / med
        rows.append([f"{bc.params_label(cfg)} {cfg.dtype}, {name}", f"{b} x {t}", f"{b * t / med:,.0f}",
                     f"{med:.3f}", f"{times[0] - med:.1f}", f"{f / 1e12:.2f}", f"{100 * f / peak:.1f}%"])
        del run
    print(f"\nmatmul limit: {peak / 1e12:.1f} TFLOP/s ({how})\n")
    bc.print_table(["run", "batch", "tokens/s", "s/step", "compile s", "model TFLOP/s", "% of matmul (MFU)"], rows)
    for r in rows:
        print(f"ratio gpu SFT {r[0]}: {r[2]} tokens/s, MFU {r[-1]}")


def main(argv=None):
    args = parse_args(argv)
    s = setup_of(args)
    if args.gpu:
        return gpu_main(args, s)
    if args.packing:
        return packing_main(args, s)
    torch, threads = bc.start_torch(args.omp_wait_policy)
    from rlhf_jax.lora import LoraConfig
    rates = bc.matmul_rate()
    total = s.warmup + s.steps
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(args.world_dir or Path(root) / "world")
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), **shape)
        cfg, params, _ = bc.load_cpu_model(ckpt, args.layers)
        data = sft_data(world, s)
        real = float(data.attention_mask.sum(1).mean())
        ours = {"full": OursSFT(cfg, params, data, batch=s.batch, lr=s.lr, steps=total),
                "lora": OursSFT(cfg, params, data, batch=s.batch, lr=s.lr, steps=total,
                                lora=LoraConfig(rank=s.rank, alpha=2.0 * s.rank))}
        t_pad = ours["full"].batches.mean_width(s.warmup)
        times = {k: [] for k in ours}

        def between(i):
            for k, run in ours.items():
                times[k].append(run(i))

        clock = bc.step_clock(between)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trl(ckpt, world.tokenizer, data, s, total, out, callbacks=[clock])
            print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} "
                  f"blocks, vocab {cfg.vocab_size}); {data.input_ids.shape[0]} examples, mean {real:.1f} real "
                  f"tokens, ours padded to "
                  f"{t_pad:.1f} on average (widths {sorted(set(ours['full'].batches.widths))}); batch {s.batch}; {s.warmup} warm-up + {s.steps} measured steps",
                  flush=True)
            gc.collect()
            gc.freeze()
            trainer.train()
            gc.unfreeze()
        times["trl"] = clock.times
    rates += bc.matmul_rate()
    peak = bc.median(rates)
    print(f"\nfloat32 matmul rate (jitted 1024^3, median of {len(rates)}): {peak / 1e9:.1f} GFLOP/s; "
          f"load average at end {os.getloadavg()[0]:.1f}\n")
    n = bc.matmul_params(cfg)
    names = {"trl": "TRL 1.12 SFTTrainer, full fine-tuning", "full": "ours, full fine-tuning",
             "lora": f"ours, LoRA r={s.rank}"}
    c = {"full": 6, "lora": 4}
    tps, rows = {}, []
    for k in ("trl", "full", "lora"):
        med = bc.median(times[k][s.warmup:])
        tps[k] = s.batch * real / med
        f = c[k] * n * s.batch * t_pad / med if k in c else None
        rows.append([names[k], f"{tps[k]:,.0f}", f"{med * 1e3:.1f}", f"{times[k][0] - med:.1f}",
                     "-" if f is None else f"{f / 1e9:.1f}", "-" if f is None else f"{100 * f / peak:.1f}%"])
    bc.print_table(["run", "tokens/s (real)", "ms/step", "compile / warm-up s", "model GFLOP/s",
                    "% of matmul rate"], rows)
    print("seconds per step (the first is the warm-up):")
    for k in ("trl", "full", "lora"):
        print(bc.steps_line(names[k], times[k]))
    print()
    print(bc.ratio_line("SFT tokens/s, ours full fine-tuning", tps["full"], tps["trl"], target=1.5))
    print(bc.ratio_line("SFT tokens/s, ours LoRA", tps["lora"], tps["trl"]))
    return {"tps": tps}


if __name__ == "__main__":
    main()
