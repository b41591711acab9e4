"""What fits: XLA's memory analysis of the SFT, reward, PPO, GRPO and DPO update steps for real model shapes,
compiled ahead of time from abstract arrays on this CPU (nothing is allocated: parameters, adapters,
optimizer state and batches are ``jax.ShapeDtypeStruct``s).

For each row the library's own step is built (``make_sft``, ``make_reward``, ``make_ppo``, ``make_grpo``,
``make_dpo`` from
``rlhf_jax.train``, their ``init`` traced with ``jax.eval_shape``), lowered with
``rlhf_jax.sharding.jit_step(step, mesh, state)`` (the state donated) and compiled;
the row prints XLA's ``memory_analysis()`` -- arguments (base + trainable state + batch), outputs,
temporaries -- the bytes one device needs at the peak (arguments + temporaries + outputs not aliased
to a donated argument), and the compile time. Mesh rows compile the same step on an 8-device CPU mesh
(``--xla_force_host_platform_device_count=8``) with the library's partition rules and ``fsdp=8``;
their figures are per device.

Model shapes (public configs): Qwen2.5-0.5B (V 151936, D 896, 24 layers, 14/2 heads, F 4864, q/k/v
bias, tied), Qwen2.5-7B (V 152064, D 3584, 28 layers, 28/4 heads, F 18944, q/k/v bias), Llama-3.1-8B
(V 128256, D 4096, 32 layers, 32/8 heads, F 14336, rope scaling x8). bfloat16 base, LoRA rank 16
on every linear layer, AdamW in float32 (gradient clipping 1.0); "full" rows fine-tune float32
master weights with bfloat16 compute. Rows use the library's scale options (layer scan,
``remat="block"``, chunked attention above 512 queries, ``logit_chunk=128``: log-probs from hidden
states in chunks of 128 positions; PPO's experience pass in groups of the minibatch,
``experience_batch``); "before" rows switch them off (unrolled layers, no remat, XLA attention,
whole ``[B, T, V]`` float32 logits, the experience pass over the whole rollout) to show what they
buy. After the rows it prints the "what fits" table of the README (peak GiB per device against 24,
40 and 80 GiB).

    python experiments/aot_memory.py                 # every row, each in its own process (~15 min)
    python experiments/aot_memory.py --rows sft-0.5b,sft-7b   # some rows
    python experiments/aot_memory.py --list          # the row names

Each row runs in a child process (the compiler's own memory is returned between rows; the big rows
take one or two minutes and a few GiB of RAM each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

GiB = 1024 ** 3
RESULT_TAG = "AOT_RESULT "


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    algo: str            # sft | reward | ppo | grpo | dpo
    shape: str           # qwen0.5b | qwen7b | llama8b
    batch: int           # sequences (SFT), pairs (reward, DPO), rollout rows (PPO, GRPO: prompts x 8)
    seq: int             # tokens per sequence (PPO, GRPO: prompt + response; DPO: prompt + one completion)
    devices: int = 1
    before: bool = False  # switch the scale options off
    full: bool = False    # full fine-tuning (PPO: policy and critic), float32 master weights, bf16 compute
    mini_batch: int = 8
    target: str = ""


ROWS = [
    Row("sft-0.5b-before", "sft", "qwen0.5b", 8, 1024, before=True),
    Row("sft-0.5b-b1-before", "sft", "qwen0.5b", 1, 1024, before=True),
    Row("sft-0.5b", "sft", "qwen0.5b", 8, 1024, target="temp<=3"),
    Row("reward-0.5b", "reward", "qwen0.5b", 8, 1024),
    Row("ppo-0.5b", "ppo", "qwen0.5b", 64, 1024),
    Row("grpo-0.5b", "grpo", "qwen0.5b", 64, 1024),
    Row("dpo-0.5b", "dpo", "qwen0.5b", 8, 1024),
    Row("sft-7b-before", "sft", "qwen7b", 8, 1024, before=True),
    Row("sft-7b", "sft", "qwen7b", 8, 1024, target="temp<=8"),
    Row("reward-7b", "reward", "qwen7b", 8, 1024),
    Row("ppo-7b", "ppo", "qwen7b", 64, 1024, target="args+temp<=80"),
    Row("grpo-7b", "grpo", "qwen7b", 64, 1024, target="args+temp<=80"),
    Row("dpo-7b", "dpo", "qwen7b", 8, 1024, target="args+temp<=80"),
    Row("sft-8b", "sft", "llama8b", 8, 1024),
    Row("ppo-8b", "ppo", "llama8b", 64, 1024),
    Row("sft-7b-fsdp8", "sft", "qwen7b", 8, 1024, devices=8),
    Row("ppo-7b-fsdp8", "ppo", "qwen7b", 64, 1024, devices=8),
    Row("ppo-8b-full-fsdp8", "ppo", "llama8b", 64, 1024, devices=8, full=True, target="peak<=80"),
]


def model_config(shape: str, *, before: bool, full: bool):
    from rlhf_jax.model import ModelConfig, RopeScaling

    common = dict(max_position_embeddings=32768, dtype="bfloat16", pad_token_id=0, eos_token_id=2)
    if shape == "qwen0.5b":
        cfg = ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                          intermediate_size=4864, qkv_bias=True, tie_word_embeddings=True, rope_theta=1e6, **common)
    elif shape == "qwen7b":
        cfg = ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                          intermediate_size=18944, qkv_bias=True, rope_theta=1e6, **common)
    elif shape == "llama8b":
        cfg = ModelConfig(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                          intermediate_size=14336, rope_theta=5e5, rope_scaling=RopeScaling(factor=8.0), **common)
    else:
        raise ValueError(shape)
    if before:
        cfg = cfg.replace(scan_layers=False, remat="none", attention="xla")
    else:
        cfg = cfg.replace(scan_layers=True, remat="block", attention="auto")
    if full:  # float32 master weights (and Adam state), bfloat16 compute
        cfg = cfg.replace(dtype="float32", compute_dtype="bfloat16")
    return cfg


# ------------------------------------------------------------------------------------------
# the steps: one small builder per algorithm, each -> (abstract state, step(state, base, batch), abstract batch)


def _optimizer():
    from rlhf_jax.train import OptimConfig, make_optimizer

    return make_optimizer(OptimConfig(learning_rate=1e-5, max_grad_norm=1.0))


def _abstract_base(cfg):
    import jax
    import jax.numpy as jnp

    from rlhf_jax.model import Transformer

    return jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]


def _abstract_state(algo, base, **kw):
    import jax

    return jax.eval_shape(lambda k, b: algo.init(k, b, **kw), jax.random.PRNGKey(0), base)


def _abstract_rollout(rows: int, tokens: int, n: int):
    """``(Rollout, scores)`` as abstract arrays: ``rows`` sequences of ``tokens`` (the last ``n`` the
    response) and one score per row."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.rollout import Rollout

    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    r, t = rows, tokens
    return Rollout(i32(r, t), i32(r, t), i32(r, n), i32(r), jax.ShapeDtypeStruct((r,), jnp.bool_), f32(r, n)), f32(r)


def build_sft(cfg, lora_cfg, row: Row, base):
    """``make_sft``'s step: LoRA SFT, the completion NLL from hidden states in chunks of 128
    positions (``SFTConfig(logit_chunk=128)``; whole logits when ``row.before``)."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.train import SFTBatch, SFTConfig, make_sft

    algo = make_sft(cfg, _optimizer(), SFTConfig(lora=lora_cfg, logit_chunk=0 if row.before else 128))
    tok = jax.ShapeDtypeStruct((row.batch, row.seq), jnp.int32)
    return _abstract_state(algo, base), algo.step, SFTBatch(tok, tok, tok)


def build_reward(cfg, lora_cfg, row: Row, base):
    """``make_reward``'s step: base + LoRA + score head on the last token, Bradley-Terry loss over
    ``row.batch`` pairs (2 * batch sequences per pass; no vocabulary)."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.train import RewardConfig, make_reward

    algo = make_reward(cfg, _optimizer(), RewardConfig(lora=lora_cfg))
    tok = jax.ShapeDtypeStruct((row.batch, 2, row.seq), jnp.int32)
    batch = {"input_ids": tok, "attention_mask": tok, "margin": jax.ShapeDtypeStruct((row.batch,), jnp.float32)}
    return _abstract_state(algo, base), algo.step, batch


def build_ppo(cfg, lora_cfg, row: Row, base):
    """``make_ppo``'s step on a rollout of ``row.batch`` rows (prompt = response = seq / 2): the
    experience pass (policy, reference and critic forward passes in groups of the minibatch,
    ``experience_batch``), k1 KL penalty, GAE, whitened advantages, then one epoch of minibatches of
    the clipped policy + value loss - 0.01 x entropy on the policy and critic (adapters, or full
    trees with ``row.full``); log-probs and entropy from hidden states in chunks of 128 positions
    unless ``row.before``."""
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.train import PPOConfig, make_ppo
    from rlhf_jax.train.ppo import PPOBatch

    lora = None if row.full else lora_cfg
    r, t, m = row.batch, row.seq, row.mini_batch
    n = t // 2
    config = PPOConfig(policy_lora=lora, critic_lora=lora, critic_init="zero", batch_size=r, mini_batch_size=m,
                       ppo_epochs=1, entropy_coef=0.01, sampling=SamplingConfig(max_new_tokens=n),
                       logit_chunk=0 if row.before else 128, experience_batch=None if row.before else m)
    algo = make_ppo(cfg, _optimizer(), config)
    ro, scores = _abstract_rollout(r, t, n)
    return _abstract_state(algo, base), algo.step, PPOBatch(ro, scores)


def build_grpo(cfg, lora_cfg, row: Row, base):
    """``make_grpo``'s step on ``row.batch`` completions = ``row.batch / 8`` prompts x G = 8 (prompt =
    completion = seq / 2): the reference pass (k3 KL term, beta 0.04), group advantages, then
    minibatches of ``row.mini_batch`` completions (whole groups) of the clipped surrogate; each
    group's prompt computed once and log-probs from hidden states in chunks of 128 positions
    unless ``row.before`` (row-wise passes, whole logits)."""
    from rlhf_jax.rollout import SamplingConfig
    from rlhf_jax.train import GRPOConfig, GroupBatch, make_grpo

    r, t, m, g = row.batch, row.seq, row.mini_batch, 8
    n = t // 2
    config = GRPOConfig(policy_lora=None if row.full else lora_cfg, batch_size=r // g, group_size=g, mini_batch_size=m,
                        kl_coef=0.04, sampling=SamplingConfig(max_new_tokens=n), shared_prompt=not row.before,
                        logit_chunk=0 if row.before else 128)
    algo = make_grpo(cfg, _optimizer(), config)
    return _abstract_state(algo, base), algo.step, GroupBatch(*_abstract_rollout(r, t, n))


def build_dpo(cfg, lora_cfg, row: Row, base):
    """``make_dpo``'s step on ``row.batch`` pairs (prompt = each completion = seq / 2): the policy
    (LoRA) and reference (the base, adapter off, in the same step) log-probs of chosen and rejected
    with each prompt computed once, log-probs from hidden states in chunks of 128 positions unless
    ``row.before``."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.train import DPOConfig, make_dpo
    from rlhf_jax.train.dpo import DPOBatch

    b, half = row.batch, row.seq // 2
    config = DPOConfig(lora=lora_cfg, batch_size=b, max_prompt_length=half, max_completion_length=half,
                       logit_chunk=0 if row.before else 128)
    algo = make_dpo(cfg, _optimizer(), config)
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    return _abstract_state(algo, base), algo.step, DPOBatch(i32(b, half), i32(b, half), i32(b, 2, half),
                                                            i32(b, 2, half))


BUILDERS = {"sft": build_sft, "reward": build_reward, "ppo": build_ppo, "grpo": build_grpo, "dpo": build_dpo}


# ------------------------------------------------------------------------------------------
# compile one row


def _with_shardings(tree, shardings):
    import jax

    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def compile_row(row: Row) -> dict:
    import jax

    from rlhf_jax.lora import LoraConfig, tree_size
    from rlhf_jax.sharding import MeshConfig, batch_sharding, jit_step, make_mesh, param_shardings

    cfg = model_config(row.shape, before=row.before, full=row.full)
    lora_cfg = LoraConfig(rank=16, alpha=32.0)
    # the frozen base: bfloat16; with row.full float32 master weights (the trainable copies and the
    # reference alike), bfloat16 compute
    base = _abstract_base(cfg)
    state, step, batch = BUILDERS[row.algo](cfg, lora_cfg, row, base)
    mesh = None
    if row.devices > 1:
        mesh = make_mesh(MeshConfig(data=1, fsdp=row.devices, tensor=1), devices=jax.devices()[:row.devices])
        state = _with_shardings(state, param_shardings(state, mesh))
        base = _with_shardings(base, param_shardings(base, mesh))
        bs = batch_sharding(mesh)
        batch = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=bs), batch)
    jitted = jit_step(step, mesh, state, donate_argnums=0)
    t0 = time.perf_counter()
    lowered = jitted.lower(state, base, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    out = dict(row=row.name, algo=row.algo, shape=row.shape, batch=row.batch, seq=row.seq, devices=row.devices,
               before=row.before, full=row.full, target=row.target,
               arguments=ma.argument_size_in_bytes, outputs=ma.output_size_in_bytes, temporaries=ma.temp_size_in_bytes,
               aliased=ma.alias_size_in_bytes, trace_s=t1 - t0, compile_s=t2 - t1,
               base_bytes=tree_size(base)[1], state_bytes=tree_size(state)[1])
    out["peak"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"]
    if row.devices == 1:
        est = estimate(row, cfg, lora_cfg)
        if est is not None:
            out["estimate_update"], out["estimate_held"] = est.update, est.held
    return out


def estimate(row: Row, cfg, lora_cfg):
    """``rlhf_jax.sharding.memory_estimate`` for the same step (its ``update`` term is the update
    step's temporaries)."""
    from rlhf_jax.sharding import memory_estimate

    if row.algo in ("grpo", "dpo"):  # memory_estimate models SFT, reward and PPO steps only
        return None
    base_cfg = cfg.replace(dtype="bfloat16", compute_dtype=None) if row.full else cfg
    chunk = None if row.before else 128
    if row.algo == "sft":
        return memory_estimate(base_cfg, lora_cfg, row.batch, row.seq, trainable_adapters=1, frozen_adapters=0,
                               chunk_size=chunk)
    if row.algo == "reward":
        return memory_estimate(base_cfg, lora_cfg, 2 * row.batch, row.seq, trainable_adapters=1, frozen_adapters=0,
                               vocabulary=False)
    return memory_estimate(base_cfg, lora_cfg, row.batch, row.seq, mini_batch=row.mini_batch, frozen_adapters=0,
                           full=row.full, logit_positions=row.seq // 2, chunk_size=chunk)


def check_target(res: dict) -> str:
    t = res["target"]
    if not t:
        return ""
    what, limit = t.split("<=")
    value = {"temp": res["temporaries"], "args+temp": res["arguments"] + res["temporaries"],
             "peak": res["peak"]}[what] / GiB
    return f"{what} {value:.1f} <= {limit} GiB: {'met' if value <= float(limit) else 'MISSED'}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    p.add_argument("--list", action="store_true", help="print the row names and exit")
    p.add_argument("--estimates", action="store_true",
                   help="print memory_estimate's figures for every one-device row (no compiling) and exit")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.list:
        print("\n".join(r.name for r in ROWS))
        return
    if args.estimates:
        from rlhf_jax.lora import LoraConfig

        for r in ROWS:
            est = estimate(r, model_config(r.shape, before=r.before, full=r.full), LoraConfig(rank=16, alpha=32.0))
            if r.devices == 1 and est is not None:
                print(f"{r.name:22s} update {est.update / GiB:7.2f} GiB  held {est.held / GiB:6.2f} GiB")
        return
    if args.child:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        row = next(r for r in ROWS if r.name == args.child)
        print(RESULT_TAG + json.dumps(compile_row(row)), flush=True)
        return
    names = [n for n in args.rows.split(",") if n] or [r.name for r in ROWS]
    unknown = sorted(set(names) - {r.name for r in ROWS})
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; --list shows them")
    results = []
    print("| row | algo | shape | batch x seq | devices | arguments | temporaries | outputs | peak | compile s | "
          "memory_estimate (temp) | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's rlhf_jax first
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name], capture_output=True,
                              text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
        if proc.returncode or not lines:
            print(f"| {name} | FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        res = json.loads(lines[-1][len(RESULT_TAG):])
        results.append(res)
        g = lambda k: f"{res[k] / GiB:.2f}"
        est = "-"
        if "estimate_update" in res:
            est = f"{res['estimate_update'] / GiB:.2f} ({res['estimate_update'] / res['temporaries'] - 1:+.0%})"
        print(f"| {name} | {res['algo']}{' full' if res['full'] else ''} | {res['shape']} | {res['batch']} x "
              f"{res['seq']} | {res['devices']} | {g('arguments')} | {g('temporaries')} | {g('outputs')} | "
              f"{g('peak')} | {res['compile_s']:.1f} | {est} | {check_target(res)} |", flush=True)
    print("\nWhat fits (peak GiB per device; LoRA r16 on every linear layer unless 'full'; PPO: rollout batch, "
          "prompt + response tokens, minibatch 8):\n")
    print("| model | method | batch x tokens | devices | GiB per device | 24 GiB | 40 GiB | 80 GiB |")
    print("|---|---|---|---|---|---|---|---|")
    names = {"qwen0.5b": "Qwen2.5-0.5B", "qwen7b": "Qwen2.5-7B", "llama8b": "Llama-3.1-8B"}
    for res in results:
        if res["before"]:
            continue
        peak = res["peak"] / GiB
        fits = " | ".join("yes" if peak <= cap else "no" for cap in (24, 40, 80))
        method = ("full " if res["full"] else "LoRA ") + res["algo"].upper()
        print(f"| {names[res['shape']]} | {method} | {res['batch']} x {res['seq']} | {res['devices']} | {peak:.1f} | "
              f"{fits} |")
    by = {r["row"]: r for r in results}
    if "sft-7b" in by and "sft-0.5b" in by:
        ratio = by["sft-7b"]["compile_s"] / by["sft-0.5b"]["compile_s"]
        print(f"\ncompile time sft-7b / sft-0.5b = {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'})")
    print("\nGiB per device; peak = arguments + temporaries + outputs - donated (aliased) bytes; "
          "memory_estimate (temp): rlhf_jax.sharding.memory_estimate(...).update for the same step (one device) "
          "and its difference from XLA's temporaries.")


if __name__ == "__main__":
    main()
