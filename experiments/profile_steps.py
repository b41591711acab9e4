"""Where the time of our training steps goes, on the peer benchmarks' model (random Llama, width
256, 4 blocks, toy vocabulary ~410; ours only, no torch):

- PPO (the ``bench_ppo.py`` setting: batch 16, 48 response tokens, 4 epochs x 2 minibatches),
  LoRA and full fine-tuning: compile of the sampler and of the step, then per step generation
  (the jitted sampler), experience (reference / critic / reward forward passes, GAE: the jitted
  ``make_ppo_experience``) and the update (the rest of the step: 8 minibatch forward + backward
  passes of policy and critic with the optimizer).
- SFT (``bench_sft.py``'s batch of 32) and the reward model (``bench_reward.py``'s 16 pairs), full
  and LoRA: host-to-device copy of the batch, forward (the loss alone), forward + backward, and
  the whole step (+ optimizer and the finite-check).
- For each step, an XLA profile (``jax.profiler``) of a few steps split into matmuls (YNNPACK /
  Eigen dot calls), element-wise / reduction fusions and copies / transposes, with the matmuls'
  achieved FLOP rate next to a jitted 1024^3 matmul measured in the same run.

    python experiments/profile_steps.py            # ~3 minutes on 2 cores
    python experiments/profile_steps.py --tiny     # seconds (smoke)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402
import bench_ppo  # noqa: E402
import bench_reward  # noqa: E402
import bench_sft  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``repeats``) of ``fn()`` (blocked)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, bc.median(times)


def op_split(fn, repeats: int) -> dict[str, float]:
    """Seconds per call by XLA op kind, from a ``jax.profiler`` trace of ``repeats`` calls
    (both CPU threads' op time added up, so the parts can exceed the wall time)."""
    import jax

    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(repeats):
            jax.block_until_ready(fn())
        jax.profiler.stop_trace()
        events = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    split: dict[str, float] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "PjitFunction", "end:")) or "while" in name:
            continue
        kind = re.sub(r"\.\d+$", "", name)
        if kind.startswith(("ynn", "xnn", "dot", "onednn")):
            key = "matmuls"
        elif "copy" in kind or "transpose" in kind:
            key = "copies/transposes"
        elif "fusion" in kind or kind.startswith(("wrapped_", "reduce", "scatter", "gather", "select", "add")):
            key = "element-wise/reductions"
        else:
            key = "runtime (waits, dispatch)"
        split[key] += e["dur"] * 1e-6 / repeats
    return dict(split)


def split_cells(split: dict[str, float]) -> list[str]:
    keys = ["matmuls", "element-wise/reductions", "copies/transposes", "runtime (waits, dispatch)"]
    total = sum(split.values()) or 1.0
    return [f"{1e3 * split.get(k, 0.0):.0f} ms ({100 * split.get(k, 0.0) / total:.0f}%)" for k in keys]


def ppo_rows(cfg, base, tok, prompts, variants, repeats):
    import jax

    from rlhf_jax.train import make_ppo_experience

    rows = []
    s = bench_ppo.Setup()
    for v in variants:
        tr = bench_ppo.make_ours(v, cfg, base, tok, prompts, s)
        exp = jax.jit(make_ppo_experience(tr.model_config, tr.config))
        c_gen, gen = timed(lambda: tr.rollout(0), repeats)
        batch = tr.batch(0)
        c_exp, t_exp = timed(lambda: exp(tr.state, tr.base, batch), repeats)
        counter = iter(range(10 ** 6))
        c_step, step = timed(lambda: tr.train_step(next(counter)) and tr.state, repeats)
        split = op_split(lambda: tr.train_step(next(counter)) and tr.state, 2)
        rows.append([f"PPO {v}", f"{c_gen:.1f} + {c_step:.1f}", f"{step:.3f}", f"{gen:.3f}", f"{t_exp:.3f}",
                     f"{step - gen - t_exp:.3f}", *split_cells(split)])
    return rows


def step_loss(kind, cfg, params, lora):
    """The loss our SFT / reward step differentiates, as ``loss(trainable, rows)``."""
    from rlhf_jax.losses import bradley_terry_loss
    from rlhf_jax.model import Transformer
    from rlhf_jax.lora import lora_config_of, model_variables
    from rlhf_jax.scoring import raw_scores
    from rlhf_jax.train import lm_loss

    if kind == "SFT":
        def loss(trainable, r):
            model = Transformer(cfg, lora=lora_config_of(trainable))
            logits = model.apply(model_variables(params, trainable), r.input_ids, attention_mask=r.attention_mask).logits
            return lm_loss(logits, r.input_ids, r.loss_mask)[0]
    else:
        def loss(trainable, r):
            b, k, t = r["input_ids"].shape
            s = raw_scores(cfg, trainable._replace(gain=1.0, bias=0.0), params, r["input_ids"].reshape(b * k, t),
                           r["attention_mask"].reshape(b * k, t)).reshape(b, k)
            return bradley_terry_loss(s[:, 0], s[:, 1])[0]
    return loss


def train_rows(kind, cfg, params, data, batch, variants, repeats):
    """SFT or reward: host-to-device copy, forward, forward + backward, whole step."""
    import jax

    from rlhf_jax.lora import LoraConfig

    rows = []
    for v in variants:
        lora = LoraConfig(rank=8, alpha=16.0) if v == "lora" else None
        maker = bench_sft.OursSFT if kind == "SFT" else bench_reward.OursReward
        run = maker(cfg, params, data, batch=batch, lr=1e-4, lora=lora, steps=2)
        host = run.batches.rows(0)
        _, t_copy = timed(lambda: jax.device_put(host), repeats)
        rows_dev = jax.device_put(host)
        loss = step_loss(kind, cfg, params, lora)
        fwd_fn, grad_fn = jax.jit(loss), jax.jit(jax.grad(loss))
        _, fwd = timed(lambda: fwd_fn(run.state.params, rows_dev), repeats)
        _, fb = timed(lambda: grad_fn(run.state.params, rows_dev), repeats)
        c_step, step = timed(lambda: run.run(rows_dev) or run.state, repeats)
        split = op_split(lambda: run.run(rows_dev) or run.state, 3)
        rows.append([f"{kind} {v}", f"{c_step:.1f}", f"{1e3 * step:.0f} ms", f"{1e3 * t_copy:.2f} ms",
                     f"{1e3 * fwd:.0f} ms", f"{1e3 * fb:.0f} ms", f"{1e3 * (step - fb):.0f} ms", *split_cells(split)])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model (a smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    import jax

    from rlhf_jax.model import load_pretrained

    print(bc.machine_line(), flush=True)
    rate = bc.median(bc.matmul_rate())
    repeats = 1 if args.tiny else args.repeats
    with tempfile.TemporaryDirectory() as root:
        world = bc.build_world_dir(Path(root) / "world")
        shape = bc.TINY_SHAPE if args.tiny else bc.CPU_SHAPE
        ckpt = bc.build_checkpoint(Path(root) / "ckpt", vocab=len(world.tokenizer), **shape)
        cfg, params, _ = load_pretrained(ckpt, tokenizer=False)
        tok, prompts = bc.load_world_tokenizer(Path(root) / "world"), [q.text for q in world.train_prompts]
        print(f"model {bc.params_label(cfg)} parameters (width {cfg.hidden_size}, {cfg.num_layers} blocks); "
              f"float32 matmul rate {rate / 1e9:.0f} GFLOP/s (jitted 1024^3)\n", flush=True)
        ppo = ppo_rows(cfg, params, tok, prompts, ["lora", "full"], repeats)
        sft_setup = bench_sft.Setup(examples=256)
        rw_setup = dataclasses.replace(bench_reward.Setup(), pairs=256)
        sft = train_rows("SFT", cfg, params, bench_sft.sft_data(world, sft_setup), 32, ["full", "lora"], repeats)
        rw = train_rows("reward", cfg, params, bench_reward.pair_arrays(world, rw_setup), 16, ["full", "lora"],
                        repeats)
    kinds = ["matmuls", "element-wise", "copies/transposes", "runtime"]
    print("PPO step (seconds): compile = sampler + step; update = step - generation - experience")
    bc.print_table(["run", "compile s", "step", "generation", "experience", "update", *kinds], ppo)
    print("SFT / reward step: forward = loss alone, fwd+bwd = its gradient, optimizer = step - fwd+bwd")
    bc.print_table(["run", "compile s", "step", "host->device", "forward", "fwd+bwd", "optimizer etc.", *kinds],
                   sft + rw)
    print("op kinds: XLA op time summed over both CPU threads, per step (from jax.profiler)")
    del jax
    return {"ppo": ppo, "train": sft + rw}


if __name__ == "__main__":
    main()
