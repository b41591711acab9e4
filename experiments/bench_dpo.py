"""DPO training throughput: TRL 1.12's ``DPOTrainer`` against our DPO step (``rlhf_jax.train.make_dpo``,
jitted once with donation as ``train_dpo`` does) on the SAME random Llama checkpoint (width 256, 4
blocks, the toy world's ~410-word vocabulary) and the SAME token ids: 256 preference pairs, each a
256-token prompt and two 64-token completions cut from the toy world's SFT corpus (tokenised once,
handed to TRL pre-tokenised: ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, its dataset
preparation skipped). Batch 8 pairs, sigmoid loss, beta 0.1, AdamW with gradient clipping 1.0,
float32, no gradient checkpointing.

What each side computes per pair:

- TRL: ``prompt + chosen`` and ``prompt + rejected`` as two sequences (2 x 320 positions) through
  the policy (forward + backward) and again through the reference (forward, no gradient): with
  full fine-tuning the reference is a second full model (TRL's default), with LoRA (PEFT) the
  same model with the adapters disabled.
- ours: the prompt ONCE per pair, both completions attending to its keys and values
  (``rlhf_jax.rollout.grouped_response_logprobs``: 256 + 2 x 64 = 384 positions) through the
  policy and through the reference = the frozen base with the adapter off (full fine-tuning: the
  policy is a copy, the base the reference); ``reference="cached"``: the reference's log-probs
  computed once for the dataset before training (timed apart), each step runs the policy alone.

Rows: TRL full / ours full (like for like), then TRL LoRA r=8 / ours LoRA r=8 / ours LoRA with the
reference cached. Each TRL run alternates step by step with the ours rows of its kind in ONE
process (our steps run inside a TRL step-end callback, outside TRL's timed span); the first step
is left out of the medians and its excess is reported as compile / warm-up.

Threads, OMP policy and the matmul probe: as in ``bench_sft.py`` / ``bench_reward.py``.

Model FLOPs (attention-score FLOPs left out): per pair, c * (N_blocks * positions + N_head *
scored positions) for the policy (c = 6 full, 4 LoRA) plus 2 * (the same) for the reference pass,
where N_blocks are the matmul parameters of the blocks and N_head the LM head's; ours scores the
2 x 64 completion positions only, TRL computes logits at all 640.

    python experiments/bench_dpo.py            # full run (a few minutes on 2 cores)
    python experiments/bench_dpo.py --quick    # fewer steps
    python experiments/bench_dpo.py --gpu      # accelerator: ours only, 0.5B-class bf16 model
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


@dataclasses.dataclass(frozen=True)
class Setup:
    batch: int = 8
    pairs: int = 256
    prompt: int = 256
    completion: int = 64
    rank: int = 8
    warmup: int = 1
    steps: int = 8
    lr: float = 1e-5
    beta: float = 0.1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_common_args(p)
    return p.parse_args(argv)


def setup_of(args) -> Setup:
    s = Setup()
    if args.tiny:
        s = dataclasses.replace(s, batch=2, pairs=8, prompt=16, completion=8, rank=4, steps=1)
    elif args.quick:
        s = dataclasses.replace(s, steps=3)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    return s


def token_pairs(tokenizer, corpus_texts, s: Setup, seed: int = 0) -> list[dict]:
    """``s.pairs`` rows of token ids: a ``s.prompt``-token prompt and two ``s.completion``-token
    completions, windows of the corpus's token stream at random offsets."""
    stream, need = [], s.prompt + 2 * s.completion
    for text in corpus_texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(stream) > 4 * need + s.pairs:
            break
    if len(stream) <= need:
        raise ValueError(f"the corpus has only {len(stream)} tokens; need more than {need}")
    rng = np.random.default_rng(seed)
    window = lambda n: (lambda a: stream[a:a + n])(int(rng.integers(0, len(stream) - n)))  # noqa: E731
    return [{"prompt_ids": window(s.prompt), "chosen_ids": window(s.completion), "rejected_ids": window(s.completion)}
            for _ in range(s.pairs)]


def dpo_arrays(rows: list[dict], pad_id: int) -> dict:
    """Our host arrays (each prompt once) of the same token ids."""
    from rlhf_jax.train.grouped_batches import layout_groups

    return layout_groups([r["prompt_ids"] for r in rows], [[r["chosen_ids"], r["rejected_ids"]] for r in rows],
                         pad_id=pad_id, ids_key="completion_ids", mask_key="completion_mask")


class OursDPO(bc.TrimmedStepRunner):
    """Our DPO step: a LoRA policy over the frozen base (the reference: the base with the adapter
    off) or a full copy (``lora=None``; the base stays the frozen reference), jitted once
    (``rlhf_jax.sharding.jit_step``, state donated) as ``train_dpo`` does. ``reference="cached"``:
    the reference log-probs are computed for every pair first (``self.precompute_s``)."""

    def __init__(self, cfg, base, arrays, s: Setup, *, steps: int, lora=None, reference: str = "step", seed: int = 0):
        import jax

        from rlhf_jax.sharding import jit_step
        from rlhf_jax.train import DPOBatch, DPOConfig, OptimConfig, make_dpo, make_optimizer, precompute_reference

        dc = DPOConfig(lora=lora, beta=s.beta, batch_size=s.batch, reference=reference,
                       optim=OptimConfig(learning_rate=s.lr))
        algo = make_dpo(cfg, make_optimizer(dc.optim), dc)
        self.state = algo.init(jax.random.PRNGKey(seed), base)
        self.step_fn = jit_step(algo.step, None, self.state)
        self.precompute_s = 0.0
        if reference == "cached":
            t0 = time.perf_counter()
            arrays = dict(arrays, ref_logps=precompute_reference(cfg, base, arrays, batch_size=s.batch))
            self.precompute_s = time.perf_counter() - t0
        self.extra = base if (lora is not None or reference == "step") else None
        self.batches = bc.GroupedSteps(arrays, batch=s.batch, seed=seed, steps=steps, mask_key="completion_mask",
                                       wrap=DPOBatch)


def make_trl(ckpt, tok, rows, s: Setup, total_steps: int, out_dir: str, *, lora: bool, callbacks=()):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    class PreTokenized(DPOTrainer):
        """The pairs are token ids already (ours): TRL's text preparation is skipped."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    bc.hf_quiet()
    ds = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=s.rank, lora_alpha=2 * s.rank, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=1,
                     max_steps=total_steps, learning_rate=s.lr, beta=s.beta, loss_type=["sigmoid"], max_length=None,
                     gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                     logging_steps=10 ** 6, disable_tqdm=True, dataloader_num_workers=0, seed=0, max_grad_norm=1.0)
    trainer = PreTokenized(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=list(callbacks),
                           peft_config=peft_config)
    bc.drop_printer(trainer)
    return trainer


def flops_per_pair(cfg, s: Setup, *, ours: bool, c: int, reference: bool) -> float:
    """Model FLOPs of one pair (module docstring)."""
    blocks = bc.matmul_params(cfg, lm_head=False)
    head = cfg.vocab_size * cfg.hidden_size
    positions = s.prompt + 2 * s.completion if ours else 2 * (s.prompt + s.completion)
    scored = 2 * s.completion if ours else 2 * (s.prompt + s.completion)
    one = blocks * positions + head * scored
    return c * one + (2 * one if reference else 0)


def gpu_main(args, s: Setup):
    from rlhf_jax.lora import LoraConfig

    cfg, peak, how, base = bc.gpu_start(args.tiny)
    rng = np.random.default_rng(0)
    rows = [{"prompt_ids": rng.integers(3, cfg.vocab_size, s.prompt).tolist(),
             "chosen_ids": rng.integers(3, cfg.vocab_size, s.completion).tolist(),
             "rejected_ids": rng.integers(3, cfg.vocab_size, s.completion).tolist()} for _ in range(4 * s.batch)]
    arrays = dpo_arrays(rows, cfg.pad_token_id)
    out = []
    runs = (("full fine-tuning", None, 6), (f"LoRA r={s.rank}", LoraConfig(rank=s.rank, alpha=2.0 * s.rank), 4))
    for name, lora, c in runs[:1] if args.tiny else runs:
        run = OursDPO(cfg, base, arrays, s, steps=s.warmup + s.steps, lora=lora)
        times = [run(i) for i in range(s.warmup + s.steps)]
        med = bc.median(times[s.warmup:])
        f = flops_per_pair(cfg, s, ours=True, c=c, reference=True) * s.batch / med
        shape = f"{s.batch} pairs x ({s.prompt} + 2 x {s.completion})"
        out.append([f"{bc.params_label(cfg)} {cfg.dtype}, {name}", shape,
                    f"{s.batch / med:,.1f}", f"{med:.3f}", f"{times[0] - med:.1f}", f"{f / 1e12:.2f}",
                    f"{100 * f / peak:.1f}%"])
        del run
    print(f"\nmatmul limit: {peak / 1e12:.1f} TFLOP/s ({how})\n")
    bc.print_table(["run", "batch", "pairs/s", "s/step", "compile s", "model TFLOP/s", "% of matmul (MFU)"], out)
    for r in out:
        print(f"ratio gpu dpo {r[0]}: {r[2]} pairs/s, MFU {r[-1]}")


def main(argv=None):
    args = parse_args(argv)
    s = setup_of(args)
    if args.gpu:
        return gpu_main(args, s)
    torch, threads = bc.start_torch(args.omp_wait_policy)
    from rlhf_jax.lora import LoraConfig
    rates = bc.matmul_rate()
    total = s.warmup + s.steps
    lora = LoraConfig(rank=s.rank, alpha=2.0 * s.rank)
    times = {}
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(args.world_dir or Path(root) / "world")
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), max_positions=512, **shape)
        cfg, base, _ = bc.load_cpu_model(ckpt, args.layers)
        rows = token_pairs(world.tokenizer, [e.prompt + " " + e.completion for e in world.corpus], s)
        arrays = dpo_arrays(rows, cfg.pad_token_id)
        print(f"model: {cfg.num_params() / 1e6:.2f}M parameters (width {cfg.hidden_size}, {cfg.num_layers} blocks, "
              f"vocab {cfg.vocab_size}); {s.pairs} pairs of a {s.prompt}-token prompt and two {s.completion}-token "
              f"completions; batch {s.batch} pairs; {s.warmup} warm-up + {s.steps} measured steps", flush=True)
        phases = (("trl_full", False, {"full": dict(lora=None)}),
                  ("trl_lora", True, {"lora": dict(lora=lora), "cached": dict(lora=lora, reference="cached")}))
        precompute = {}
        for trl_name, trl_lora, variants in phases:
            ours = {k: OursDPO(cfg, base, arrays, s, steps=total, **kw) for k, kw in variants.items()}
            precompute.update({k: r.precompute_s for k, r in ours.items()})
            for k in ours:
                times[k] = []

            def between(i, ours=ours):
                for k, run in ours.items():
                    times[k].append(run(i))

            clock = bc.step_clock(between)
            with tempfile.TemporaryDirectory() as out:
                trainer = make_trl(ckpt, world.tokenizer, rows, s, total, out, lora=trl_lora, callbacks=[clock])
                gc.collect()
                gc.freeze()
                trainer.train()
                gc.unfreeze()
            times[trl_name] = clock.times
            del ours, trainer
            gc.collect()
    rates += bc.matmul_rate()
    peak = bc.median(rates)
    print(f"\nfloat32 matmul rate (jitted 1024^3, median of {len(rates)}): {peak / 1e9:.1f} GFLOP/s; "
          f"load average at end {os.getloadavg()[0]:.1f}\n")
    names = {"trl_full": "TRL 1.12 DPOTrainer, full fine-tuning (reference copy)",
             "full": "ours, full fine-tuning (base = reference)",
             "trl_lora": f"TRL 1.12 DPOTrainer, PEFT LoRA r={s.rank} (adapters disabled = reference)",
             "lora": f"ours, LoRA r={s.rank} (base = reference)",
             "cached": f"ours, LoRA r={s.rank}, reference cached"}
    spec = {"trl_full": (False, 6, True), "full": (True, 6, True), "trl_lora": (False, 4, True),
            "lora": (True, 4, True), "cached": (True, 4, False)}
    pps, table = {}, []
    for k in names:
        med = bc.median(times[k][s.warmup:])
        pps[k] = s.batch / med
        is_ours, c, ref = spec[k]
        f = flops_per_pair(cfg, s, ours=is_ours, c=c, reference=ref) * s.batch / med
        pos = s.prompt + 2 * s.completion if is_ours else 2 * (s.prompt + s.completion)
        table.append([names[k], f"{pps[k]:,.2f}", f"{med * 1e3:.0f}", f"{times[k][0] - med:.1f}",
                      f"{pos} / {pos if ref else 0}", f"{f / 1e9:.1f}", f"{100 * f / peak:.1f}%"])
    bc.print_table(["run", "pairs/s", "ms/step", "compile / warm-up s", "positions per pair (policy / reference)",
                    "model GFLOP/s", "% of matmul rate"], table)
    print(f"reference cached: computed once for {s.pairs} pairs in {precompute['cached']:.1f} s (compile included), "
          f"{precompute['cached'] / s.pairs * 1e3:.1f} ms per pair")
    print("seconds per step (the first is the warm-up):")
    for k in names:
        print(bc.steps_line(names[k], times[k]))
    print()
    print(bc.ratio_line("DPO pairs/s, ours full vs TRL full", pps["full"], pps["trl_full"], target=1.5))
    print(bc.ratio_line("DPO pairs/s, ours LoRA vs TRL LoRA", pps["lora"], pps["trl_lora"], target=1.5))
    print(bc.ratio_line("DPO pairs/s, ours LoRA vs TRL full (its default)", pps["lora"], pps["trl_full"], target=1.5))
    print(bc.ratio_line("DPO pairs/s, ours LoRA reference cached vs TRL LoRA", pps["cached"], pps["trl_lora"]))
    return {"pps": pps}


if __name__ == "__main__":
    main()
