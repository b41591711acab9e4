"""What fits: XLA's memory analysis of the SFT, reward and PPO update steps for real model shapes,
compiled ahead of time from abstract arrays on this CPU (nothing is allocated: parameters, adapters,
optimizer state and batches are ``jax.ShapeDtypeStruct``s).

For each row the step is built (one small function per algorithm below: ``build_sft``,
``build_reward``, ``build_ppo``), lowered with ``jax.jit(step, donate_argnums=0)`` and compiled;
the row prints XLA's ``memory_analysis()`` -- arguments (base + trainable state + batch), outputs,
temporaries -- the bytes one device needs at the peak (arguments + temporaries + outputs not aliased
to a donated argument), and the compile time. Mesh rows compile the same step on an 8-device CPU mesh
(``--xla_force_host_platform_device_count=8``) with the library's partition rules and ``fsdp=8``;
their figures are per device.

Model shapes (public configs): Qwen2.5-0.5B (V 151936, D 896, 24 layers, 14/2 heads, F 4864, q/k/v
bias, tied), Qwen2.5-7B (V 152064, D 3584, 28 layers, 28/4 heads, F 18944, q/k/v bias), Llama-3.1-8B
(V 128256, D 4096, 32 layers, 32/8 heads, F 14336, rope scaling x8). bfloat16 base, LoRA rank 16
on every linear layer, AdamW in float32 (gradient clipping 1.0). "now" rows use the library's scale
options (layer scan, ``remat="block"``, chunked attention above 512 queries, log-probs from hidden
states in chunks of 128 positions: ``rlhf_jax.losses.chunked``); "before" rows switch them off
(unrolled layers, no remat, XLA attention, full ``[B, T, V]`` float32 logits) to show what they buy.

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
    algo: str            # sft | reward | ppo
    shape: str           # qwen0.5b | qwen7b | llama8b
    batch: int           # sequences (SFT), pairs (reward), rollout rows (PPO)
    seq: int             # tokens per sequence (PPO: prompt + response)
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
    Row("sft-7b-before", "sft", "qwen7b", 8, 1024, before=True),
    Row("sft-7b", "sft", "qwen7b", 8, 1024, target="temp<=8"),
    Row("reward-7b", "reward", "qwen7b", 8, 1024),
    Row("ppo-7b", "ppo", "qwen7b", 64, 1024, target="args+temp<=80"),
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
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))


def _abstract_base(cfg):
    import jax
    import jax.numpy as jnp

    from rlhf_jax.model import Transformer

    return jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]


def _abstract_lora(cfg, lora_cfg):
    import jax

    from rlhf_jax.lora import init_lora
    from rlhf_jax.model import Transformer

    return jax.eval_shape(lambda k: init_lora(Transformer(cfg, lora=lora_cfg), k), jax.random.PRNGKey(0))


def _nll(cfg, params, hidden, tokens, loss_mask, chunked):
    import jax.numpy as jnp

    from rlhf_jax.losses import chunked_nll, masked_mean, token_logprobs
    from rlhf_jax.model import head_weight, lm_logits

    if chunked:
        return chunked_nll(hidden[:, :-1], *head_weight(cfg, params), tokens[:, 1:], loss_mask[:, 1:])[0]
    logp = token_logprobs(lm_logits(cfg, params, hidden[:, :-1]), tokens[:, 1:])
    return -masked_mean(logp, loss_mask[:, 1:]) + 0 * jnp.sum(hidden[:, -1:])


def build_sft(cfg, lora_cfg, row: Row):
    """LoRA SFT: completion NLL from the hidden states (chunked unless ``row.before``), AdamW on
    the adapter."""
    import jax
    import jax.numpy as jnp
    import optax

    from rlhf_jax.model import Transformer

    model, opt = Transformer(cfg, lora=lora_cfg), _optimizer()

    def loss_fn(lora, base, batch):
        hidden = model.apply({"params": base, "lora": lora}, batch["tokens"], attention_mask=batch["mask"],
                             return_hidden=True, compute_logits=False).hidden
        return _nll(cfg, base, hidden, batch["tokens"], batch["loss_mask"], not row.before)

    def step(state, base, batch):
        lora, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(lora, base, batch)
        updates, opt_state = opt.update(grads, opt_state, lora)
        return (optax.apply_updates(lora, updates), opt_state), {"loss": loss}

    lora = _abstract_lora(cfg, lora_cfg)
    state = (lora, jax.eval_shape(opt.init, lora))
    tok = jax.ShapeDtypeStruct((row.batch, row.seq), jnp.int32)
    return state, step, {"tokens": tok, "mask": tok, "loss_mask": tok}


def build_reward(cfg, lora_cfg, row: Row):
    """Reward model: base + LoRA + score head on the last token, Bradley-Terry loss over
    ``row.batch`` pairs (2 * batch sequences per pass)."""
    import jax
    import jax.numpy as jnp
    import optax

    from rlhf_jax.losses import bradley_terry_loss
    from rlhf_jax.model import Transformer, score_head

    model, opt = Transformer(cfg, lora=lora_cfg), _optimizer()

    def loss_fn(params, base, batch):
        b, _, t = batch["tokens"].shape
        tokens, mask = batch["tokens"].reshape(2 * b, t), batch["mask"].reshape(2 * b, t)
        hidden = model.apply({"params": base, "lora": params["lora"]}, tokens, attention_mask=mask,
                             return_hidden=True, compute_logits=False).hidden
        r = score_head(params["head"], hidden, mask).reshape(b, 2)
        return bradley_terry_loss(r[:, 0], r[:, 1])[0]

    def step(state, base, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, base, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    head = {"kernel": jax.ShapeDtypeStruct((cfg.hidden_size,), jnp.float32), "bias": jax.ShapeDtypeStruct((), jnp.float32)}
    params = {"lora": _abstract_lora(cfg, lora_cfg), "head": head}
    state = (params, jax.eval_shape(opt.init, params))
    tok = jax.ShapeDtypeStruct((row.batch, 2, row.seq), jnp.int32)
    return state, step, {"tokens": tok, "mask": tok}


def build_ppo(cfg, lora_cfg, row: Row):
    """One PPO update on a rollout of ``row.batch`` rows (prompt = response = seq / 2): policy,
    reference and critic passes without gradient over the rollout (in groups of the minibatch),
    k1 KL penalty + score, GAE, whitened advantages, then one epoch of minibatches (a ``lax.scan``)
    of the clipped policy loss + 0.1 x clipped value loss - 0.01 x entropy on the policy and critic
    (adapters, or full float32 copies with ``row.full``); log-probs and entropy from the hidden
    states in chunks unless ``row.before``."""
    import jax
    import jax.numpy as jnp
    import optax

    from rlhf_jax.losses import (chunked_logprobs_and_entropy, entropy_from_logits, gae, masked_mean,
                                 masked_whiten, ppo_policy_loss, ppo_value_loss, token_logprobs)
    from rlhf_jax.model import Transformer, head_weight, lm_logits, value_head

    ref_cfg = cfg.replace(dtype="bfloat16", compute_dtype=None)
    lora = None if row.full else lora_cfg
    policy, critic, reference = Transformer(cfg, lora=lora), Transformer(cfg, lora=lora), Transformer(ref_cfg)
    opt = _optimizer()
    r, t, m = row.batch, row.seq, row.mini_batch
    p = n = t // 2

    def pol_vars(params, base):
        return {"params": params["policy"]} if row.full else {"params": base, "lora": params["policy"]}

    def crit_vars(params, base):
        c = params["critic"]
        return {"params": c["params"]} if row.full else {"params": base, "lora": c["lora"]}

    def response_hidden(model, variables, tokens, mask):
        hidden = model.apply(variables, tokens, attention_mask=mask, return_hidden=True, compute_logits=False).hidden
        return hidden[:, p - 1:p + n - 1]

    def logp_entropy(head_params, hidden, targets):
        if row.before:
            logits = lm_logits(cfg, head_params, hidden)
            return token_logprobs(logits, targets), entropy_from_logits(logits)
        return chunked_logprobs_and_entropy(hidden, *head_weight(cfg, head_params), targets)

    def experience(params, base, b):
        tokens, mask = b["tokens"], b["mask"]
        resp = tokens[:, p:]
        pv = pol_vars(params, base)
        old_logp, _ = logp_entropy(pv["params"], response_hidden(policy, pv, tokens, mask), resp)
        ref_logp, _ = logp_entropy(base, response_hidden(reference, {"params": base}, tokens, mask), resp)
        values = value_head(params["critic"]["head"], response_hidden(critic, crit_vars(params, base), tokens, mask))
        return old_logp, ref_logp, values

    def loss_fn(params, base, mb):
        pv = pol_vars(params, base)
        logp, ent = logp_entropy(pv["params"], response_hidden(policy, pv, mb["tokens"], mb["mask"]), mb["tokens"][:, p:])
        values = value_head(params["critic"]["head"],
                            response_hidden(critic, crit_vars(params, base), mb["tokens"], mb["mask"]))
        pl, _ = ppo_policy_loss(logp, mb["old_logp"], mb["adv"], mb["rmask"])
        vl, _ = ppo_value_loss(values, mb["old_values"], mb["returns"], mb["rmask"])
        return pl + 0.1 * vl - 0.01 * masked_mean(ent, mb["rmask"])

    def step(state, base, b):
        params, opt_state = state
        groups = jax.tree_util.tree_map(lambda x: x.reshape(r // m, m, *x.shape[1:]), b)
        old_logp, ref_logp, values = jax.tree_util.tree_map(
            lambda x: x.reshape(r, *x.shape[2:]), jax.lax.map(lambda g: experience(params, base, g), groups))
        rmask = b["rmask"]
        last = jax.nn.one_hot(jnp.sum(rmask, -1) - 1, n)
        rewards = -0.05 * (old_logp - ref_logp) + last * b["scores"][:, None]
        adv, returns = gae(rewards, values, rmask, gamma=1.0, lam=0.95)
        data = dict(tokens=b["tokens"], mask=b["mask"], rmask=rmask, old_logp=old_logp, old_values=values,
                    adv=masked_whiten(adv, rmask), returns=returns)
        order = jax.random.permutation(jax.random.PRNGKey(0), r).reshape(r // m, m)

        def one(carry, idx):
            params, opt_state = carry
            mb = jax.tree_util.tree_map(lambda x: x[idx], data)
            loss, grads = jax.value_and_grad(loss_fn)(params, base, mb)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), order)
        return (params, opt_state), {"loss": jnp.mean(losses)}

    head = {"kernel": jax.ShapeDtypeStruct((cfg.hidden_size,), jnp.float32), "bias": jax.ShapeDtypeStruct((), jnp.float32)}
    if row.full:
        full = _abstract_base(cfg)  # float32 master copies
        params = {"policy": full, "critic": {"params": full, "head": head}}
    else:
        adapter = _abstract_lora(cfg, lora_cfg)
        params = {"policy": adapter, "critic": {"lora": adapter, "head": head}}
    state = (params, jax.eval_shape(opt.init, params))
    tok = jax.ShapeDtypeStruct((r, t), jnp.int32)
    batch = {"tokens": tok, "mask": tok, "rmask": jax.ShapeDtypeStruct((r, n), jnp.int32),
             "scores": jax.ShapeDtypeStruct((r,), jnp.float32)}
    return state, step, batch


BUILDERS = {"sft": build_sft, "reward": build_reward, "ppo": build_ppo}


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
    state, step, batch = BUILDERS[row.algo](cfg, lora_cfg, row)
    base = _abstract_base(cfg.replace(dtype="bfloat16", compute_dtype=None))
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
        out["estimate_update"], out["estimate_held"] = est.update, est.held
    return out


def estimate(row: Row, cfg, lora_cfg):
    """``rlhf_jax.sharding.memory_estimate`` for the same step (its ``update`` term is the update
    step's temporaries)."""
    from rlhf_jax.sharding import memory_estimate

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
            if r.devices == 1:
                est = estimate(r, model_config(r.shape, before=r.before, full=r.full), LoraConfig(rank=16, alpha=32.0))
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
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name], capture_output=True, text=True)
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
    by = {r["row"]: r for r in results}
    if "sft-7b" in by and "sft-0.5b" in by:
        ratio = by["sft-7b"]["compile_s"] / by["sft-0.5b"]["compile_s"]
        print(f"\ncompile time sft-7b / sft-0.5b = {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'})")
    print("\nGiB per device; peak = arguments + temporaries + outputs - donated (aliased) bytes; "
          "memory_estimate (temp): rlhf_jax.sharding.memory_estimate(...).update for the same step (one device) "
          "and its difference from XLA's temporaries.")


if __name__ == "__main__":
    main()
