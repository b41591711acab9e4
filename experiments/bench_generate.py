"""Generation throughput: our jitted sampler (rlhf_jax.rollout.Sampler) against PyTorch
`transformers` ``generate`` on the SAME random checkpoint, on CPU.

Each model is a Llama-family config (head dim 64, no GQA, SwiGLU width 3 D, untied LM head, vocab
2048 by default), randomly initialised with `transformers`, saved in Hugging Face format to a
temporary folder and loaded by both libraries (ours via ``rlhf_jax.model.load_pretrained``).
Prompts are ``[B, 32]`` random real tokens; both sides produce exactly 64 new tokens (ours: no EOS
ids; transformers: ``min_new_tokens = max_new_tokens``). Tokens/s = B * 64 / wall time of one
whole generate call (prefill included), median of ``--repeats`` calls made alternately for the
two libraries in this one process. Compile time (first call minus the median) is separate.

Model FLOPs of one call (the useful work; we do not count masked attention slots):

    F = B * [ (P + N - 1) * 2 * W  +  N * 2 * D * V  +  sum_{t=1}^{P+N-1} 4 * L * D * t ]

with W the matmul parameters of the L blocks (q, k, v, o, gate, up, down), P = 32 prompt tokens
(the last one is fed in the first decode step), N = 64 new tokens, D the width, V the vocab. The
fraction reported is F / time over this machine's float32 matmul rate, measured in the same run as
a jitted 1024x1024 @ 1024x1024 (median of 10, at the start and at the end).

    python experiments/bench_generate.py            # full table (a few minutes)
    python experiments/bench_generate.py --quick    # width 256, batch 16, 2 repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="width 256 / batch 16 only, 2 repeats")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ours-only", action="store_true", help="skip transformers (profiling runs)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch intra-op threads (default: every core, as XLA's CPU client)")
    p.add_argument("--omp-wait-policy", default="default", choices=["default", "PASSIVE", "ACTIVE"],
                   help="OMP_WAIT_POLICY for torch; 'default' leaves it unset (torch out of the box, its best "
                        "on an idle machine, as the trainer benchmarks do); PASSIVE is steadier on a busy "
                        "machine but handicaps torch (~1.5x when idle)")
    return p.parse_args()


def matmul_rate(jax, jnp) -> list[float]:
    """float32 FLOP/s samples of a jitted 1024^3 matmul."""
    f = jax.jit(lambda a, b: a @ b)
    a = jnp.asarray(np.random.default_rng(0).normal(size=(1024, 1024)), jnp.float32)
    f(a, a).block_until_ready()
    out = []
    for _ in range(10):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        out.append(2 * 1024 ** 3 / (time.perf_counter() - t0))
    return out


def model_flops(cfg, batch: int, prompt: int, new: int) -> float:
    d, h, n, k, f = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    w = cfg.num_layers * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f)
    fed = prompt + new - 1
    attn = 4 * cfg.num_layers * n * h * fed * (fed + 1) / 2
    return batch * (fed * 2 * w + new * 2 * d * cfg.vocab_size + attn)


def build_checkpoint(folder: str, width: int, layers: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hc = LlamaConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                     num_attention_heads=width // 64, num_key_value_heads=width // 64,
                     intermediate_size=3 * width, max_position_embeddings=512,
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(hc).float().eval().save_pretrained(folder, safe_serialization=True)


def main():
    args = parse_args()
    if args.omp_wait_policy == "default":  # read when torch starts its thread pool
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from rlhf_jax.model import Transformer, load_pretrained
    from rlhf_jax.rollout import Sampler, SamplingConfig

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    sizes = [(256, 4)] if args.quick else [(256, 4), (512, 8)]
    batches = [16] if args.quick else [16, 64]
    repeats = 2 if args.quick else args.repeats
    P, N = args.prompt, args.new
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, cores={os.cpu_count()}, load average at start "
          f"{os.getloadavg()[0]:.1f}; vocab {args.vocab}, prompt {P}, new tokens {N}, "
          f"repeats {repeats}", flush=True)
    rates = matmul_rate(jax, jnp)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for width, layers in sizes:
            folder = os.path.join(root, f"llama_{width}x{layers}")
            build_checkpoint(folder, width, layers, args.vocab)
            cfg, params, _ = load_pretrained(folder, tokenizer=False)
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            model = Transformer(cfg)
            variables = {"params": params}
            for batch in batches:
                tokens = np.random.default_rng(batch).integers(3, args.vocab, (batch, P)).astype(np.int32)
                mask = np.ones_like(tokens)
                t_tokens, t_mask = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
                for mode in ("greedy", "sampled"):
                    greedy = mode == "greedy"
                    sampler = Sampler(model, SamplingConfig(max_new_tokens=N, greedy=greedy, temperature=1.0,
                                                            eos_ids=(), pad_id=0))

                    def ours(i):
                        return jax.block_until_ready(sampler(variables, tokens, mask, jax.random.PRNGKey(i)))

                    def theirs(i):
                        torch.manual_seed(i)
                        with torch.no_grad():
                            return hf.generate(input_ids=t_tokens, attention_mask=t_mask, do_sample=not greedy,
                                               max_new_tokens=N, min_new_tokens=N, temperature=1.0, top_k=0,
                                               top_p=1.0, pad_token_id=0, eos_token_id=2)

                    t0 = time.perf_counter()
                    first = ours(0)
                    first_s = time.perf_counter() - t0
                    if args.ours_only:
                        theirs = lambda i: time.sleep(1e-3)  # noqa: E731
                    ref = theirs(0)  # warm-up
                    same = float("nan")
                    if greedy and not args.ours_only:
                        same = float(np.mean(np.asarray(first.tokens) == ref.numpy()))
                    t_ours, t_hf = [], []
                    for i in range(repeats):
                        t0 = time.perf_counter()
                        ours(i + 1)
                        t_ours.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        theirs(i + 1)
                        t_hf.append(time.perf_counter() - t0)
                    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
                    rows.append(dict(model=f"{width}x{layers}", batch=batch, mode=mode, ours=batch * N / mo,
                                     hf=batch * N / mh, step_ms=1e3 * mo / N, flops=model_flops(cfg, batch, P, N) / mo,
                                     compile_s=first_s - mo, same=same, traces=sampler.trace_count))
                    r = rows[-1]
                    print(f"  {r['model']:>6} B={batch:<3} {mode:8s} ours {r['ours']:8.0f} tok/s  transformers "
                          f"{r['hf']:7.0f} tok/s  ratio {r['ours'] / r['hf']:5.2f}", flush=True)
    rates += matmul_rate(jax, jnp)
    peak = statistics.median(rates)
    print(f"\nfloat32 matmul rate (jitted 1024^3, median of {len(rates)}): {peak / 1e9:.1f} GFLOP/s; "
          f"load average at end {os.getloadavg()[0]:.1f}\n")
    head = (f"| model (D x L) | batch | decoding | ours tok/s | transformers tok/s | ratio | ours ms/step "
            f"| model GFLOP/s | % of matmul | compile s | greedy tokens equal |")
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        eq = "-" if r["mode"] != "greedy" else f"{100 * r['same']:.1f}%"
        print(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['ours']:.0f} | {r['hf']:.0f} | "
              f"{r['ours'] / r['hf']:.2f}x | {r['step_ms']:.2f} | {r['flops'] / 1e9:.1f} | "
              f"{100 * r['flops'] / peak:.1f}% | {r['compile_s']:.1f} | {eq} |")
    print()
    for r in rows:
        print(f"ratio {r['model']} B={r['batch']} {r['mode']}: {r['ours'] / r['hf']:.2f}x transformers, "
              f"{100 * r['flops'] / peak:.1f}% of the matmul rate")
    assert all(r["traces"] == 1 for r in rows), "a sampler recompiled"


if __name__ == "__main__":
    main()
