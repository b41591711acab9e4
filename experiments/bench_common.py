"""Helpers shared by the trainer benchmarks (``bench_sft.py``, ``bench_reward.py``, ``bench_ppo.py``).

- the SAME checkpoint for both sides: a random-init Llama built with PyTorch ``transformers`` and
  saved in Hugging Face format (ours loads it with ``rlhf_jax.model.load_pretrained``), and the
  toy world's word-level tokenizer (``rlhf_jax.toyworld.build_world``, vocabulary ~410);
- the machine's matmul rate (a jitted square matmul, median of several) for the fraction of the
  limit that a trainer's model FLOPs reach;
- timing (medians), peak memory (the RSS high-water mark ``VmHWM`` of a child process that runs
  one side only), markdown tables and ratio lines.

Nothing here imports torch at module level: the child processes that run our side alone must not
pay for it in their resident memory.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

RESULT_TAG = "BENCH_RESULT "

# The CPU model: width 256, 4 blocks, head dim 64, no GQA, SwiGLU width 3 D, untied LM head; the
# vocabulary is the toy world's (~410 words).
CPU_SHAPE = dict(width=256, layers=4, heads=4, kv_heads=4, intermediate=768)
# For the smoke test: seconds, not minutes.
TINY_SHAPE = dict(width=32, layers=1, heads=2, kv_heads=2, intermediate=64)


def gpu_model_config(*, tiny: bool = False):
    """A 0.5B-class Llama-family config in bfloat16 (the Qwen2-0.5B shape: vocab 151936, width 896,
    24 blocks, 14 query / 2 key-value heads, SwiGLU 4864, q/k/v bias, tied embeddings), with the
    scale options on: layer scan, ``remat="block"``, attention "auto" (cuDNN flash attention on a
    GPU). ``tiny=True``: the same kind of config shrunk, to check the GPU mode's code path on a CPU."""
    from rlhf_jax.model import ModelConfig

    if tiny:
        return ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                           intermediate_size=128, qkv_bias=True, tie_word_embeddings=True, dtype="bfloat16",
                           max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                           scan_layers=True, remat="block", attention="auto")
    return ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                       intermediate_size=4864, qkv_bias=True, tie_word_embeddings=True, dtype="bfloat16",
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       scan_layers=True, remat="block", attention="auto")


def add_common_args(p) -> None:
    """The flags every trainer benchmark takes."""
    p.add_argument("--quick", action="store_true", help="fewer steps (a fast smoke run)")
    p.add_argument("--tiny", action="store_true", help="tiny model and batch (the smoke test; seconds)")
    p.add_argument("--gpu", action="store_true", help="accelerator mode: ours only, a 0.5B-class bf16 model")
    p.add_argument("--steps", type=int, default=None, help="measured steps (after 1 warm-up step)")
    p.add_argument("--world-dir", default=None,
                   help="build (or reuse) the toy world here instead of in a temporary folder")
    p.add_argument("--omp-wait-policy", default="default", choices=["default", "PASSIVE", "ACTIVE"],
                   help="OMP_WAIT_POLICY for torch's OpenMP threads. 'default' (here too): leave it unset "
                        "(libgomp spins a little, then sleeps), torch out of the box, its best on an idle "
                        "machine; on an oversubscribed one its steps get 2-20x slower, erratically. PASSIVE: "
                        "threads sleep at once: steady under load, but ~1.5x slower when idle. ACTIVE spins "
                        "forever and then steals a core from our steps in between.")
    p.add_argument("--layers", default="unrolled", choices=["unrolled", "scan"],
                   help="how our CPU runs apply the blocks: 'unrolled' (ModelConfig(scan_layers=False); measured "
                        "faster on these 4-block CPU models, README) or 'scan' (the library's default, which "
                        "real-size models want: compile time and HLO size flat in depth). --gpu always scans.")


def load_cpu_model(ckpt, layers: str):
    """``load_pretrained`` for the CPU comparisons: our model over ``ckpt`` with its blocks unrolled
    or scanned (``--layers``); the parameters and their layout are the same either way."""
    from rlhf_jax.model import load_pretrained

    if layers not in ("unrolled", "scan"):
        raise ValueError(f"--layers must be 'unrolled' or 'scan', got {layers!r}")
    return load_pretrained(ckpt, tokenizer=False, scan_layers=layers == "scan")


def busy_warning() -> str:
    """A warning line when other processes keep the cores busy (the timings are then unreliable,
    torch's most of all), else an empty string."""
    load = os.getloadavg()[0]
    if load <= 0.75 * cores():
        return ""
    return (f"WARNING: load average {load:.1f} on {cores()} usable cores: other processes compete; torch's "
            "OpenMP steps slow down erratically under contention. Rerun on an idle machine, or with "
            "--omp-wait-policy PASSIVE for steadier (but torch-handicapped) numbers.")


def set_omp_policy(policy: str) -> None:
    """Must run before torch is imported (libgomp reads it when its pool starts)."""
    if "torch" in sys.modules:
        raise RuntimeError("set_omp_policy must run before torch is imported")
    if policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = policy


# --------------------------------------------------------------------------------------------
# the shared checkpoint and data


def build_world_dir(folder: str | Path):
    """The toy world (prompts, SFT corpus, tokenizer; no toxicity classifier) in ``folder``,
    built once and reloaded afterwards."""
    from rlhf_jax.toyworld import WorldConfig, build_world, load_world

    folder = Path(folder)
    if (folder / "world_config.json").exists():
        return load_world(folder)
    return build_world(folder, config=WorldConfig(toxicity=None))


def load_world_tokenizer(world_dir: str | Path):
    """The world's tokenizer, without importing torch (``AutoTokenizer`` would)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(Path(world_dir) / "tokenizer", local_files_only=True)


def build_checkpoint(folder: str | Path, *, vocab: int, width: int, layers: int, heads: int, kv_heads: int,
                     intermediate: int, max_positions: int = 128, seed: int = 0) -> str:
    """A random-init ``LlamaForCausalLM`` (float32) saved with safetensors to ``folder``; pad 0,
    bos 1, eos 2 (the toy world's ids). Both libraries load this same folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hc = LlamaConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                     num_key_value_heads=kv_heads, intermediate_size=intermediate,
                     max_position_embeddings=max_positions, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(hc).float().eval().save_pretrained(str(folder), safe_serialization=True)
    return str(folder)


def params_label(cfg) -> str:
    n = cfg.num_params()
    return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.2f}M"


def matmul_params(cfg, *, lm_head: bool = True) -> int:
    """N: the parameters that take part in matmuls (the input embedding is a lookup, so it is
    left out unless it doubles as the LM head). ``lm_head=False`` for a reward / value model,
    which reads hidden states and never computes logits."""
    n = cfg.num_params()
    if not cfg.tie_word_embeddings:
        n -= cfg.vocab_size * cfg.hidden_size  # the lookup table
    if not lm_head:
        n -= cfg.vocab_size * cfg.hidden_size  # the LM head (tied or not)
    return n


# --------------------------------------------------------------------------------------------
# machine limits, timing, memory


def machine_line() -> str:
    import jax

    dev = jax.devices()[0]
    return (f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), {cores()} of {os.cpu_count()} CPU "
            f"cores usable, load average {os.getloadavg()[0]:.1f}")


def matmul_rate(*, n: int = 1024, dtype: str = "float32", repeats: int = 10) -> list[float]:
    """FLOP/s samples of a jitted ``[n, n] @ [n, n]`` in ``dtype`` (2 n^3 FLOPs each)."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a, b: a @ b)
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    f(a, a).block_until_ready()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        out.append(2 * n ** 3 / (time.perf_counter() - t0))
    return out


def matmul_limit(gpu: bool) -> tuple[float, str]:
    """(median FLOP/s, description) of the matmul probe: 1024^3 float32 on CPU, 8192^3 bfloat16
    on an accelerator."""
    n, dtype = (8192, "bfloat16") if gpu else (1024, "float32")
    rates = matmul_rate(n=n, dtype=dtype)
    return statistics.median(rates), f"jitted {n}^3 {dtype} matmul, median of {len(rates)}"


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def rss_now() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """High-water mark of this process's resident set size in bytes: ``VmHWM`` of
    ``/proc/self/status``, i.e. of the address space since ``exec``. (``ru_maxrss`` would do
    for a process started from a small parent, but Linux carries the parent's high-water mark
    over ``fork`` + ``exec`` into it, so a child of the big benchmark process would report the
    parent's size.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit_result(result: dict[str, Any]) -> None:
    """A child's one-line JSON answer on stdout (read back by :func:`run_child`)."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(script: str, argv: Sequence[str], *, timeout: float = 900) -> dict[str, Any]:
    """Run ``python script argv...`` in a fresh process; return the dict it emitted."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=timeout,
                          env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{script} {' '.join(argv)} failed (rc {proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def steps_line(label: str, times: Sequence[float]) -> str:
    """Every step's seconds, so that a load spike on this shared machine is visible."""
    return f"  {label}: " + " ".join(f"{t:.2f}" for t in times)


def mib(b: float) -> str:
    return f"{b / 2 ** 20:,.0f} MiB"


def hf_quiet() -> None:
    """Silence transformers / TRL warnings and progress output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def step_clock(between: Callable[[int], None] | None = None):
    """A ``transformers.TrainerCallback`` that records the wall time of each optimizer step of a
    Hugging Face / TRL trainer (from one ``on_step_end`` to the next; the first from
    ``on_train_begin``) and, after each step, runs ``between(step_index)`` OUTSIDE the timed
    span: that is where our side's step runs, so both libraries alternate in one process under
    the same machine load."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t0 = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t0)
            if between is not None:
                between(len(self.times) - 1)
            self._t0 = time.perf_counter()

    return StepClock()


def drop_printer(trainer) -> None:
    """Remove the per-step log printer / progress bar of a Hugging Face trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def cores() -> int:
    """CPU cores this process may run on (``taskset -c 0 python ...`` gives a 1-core comparison:
    PyTorch's OpenMP pool and XLA's thread pool both follow the affinity mask)."""
    return len(os.sched_getaffinity(0))


def torch_threads() -> int:
    """PyTorch intra-op threads = the usable cores (XLA's CPU client uses them all too)."""
    import torch

    torch.set_num_threads(cores())
    return torch.get_num_threads()


# --------------------------------------------------------------------------------------------
# our trainers' batches: cut to their longest sequence (``pad_multiple``), as train_sft and
# train_reward_model do


class TrimmedSteps:
    """The rows of each step (``batch_indices``) cut with ``trim_padding(multiple)``, as our
    trainers feed them. ``warm(run_step)`` runs one step per width that later steps will use
    (during the warm-up step), so that no compile lands in a measured step."""

    def __init__(self, data, *, batch: int, seed: int, steps: int, multiple: int = 8, mask_key: str = "attention_mask"):
        from rlhf_jax.train import batch_indices

        self.data, self.batch, self.seed, self.multiple = data, batch, seed, multiple
        items = data._asdict() if hasattr(data, "_asdict") else data
        n = np.shape(items[mask_key])[0]
        self.idx = [batch_indices(i, n, batch, seed) for i in range(steps)]
        width = lambda r: (r[mask_key] if isinstance(r, dict) else getattr(r, mask_key)).shape[-1]
        self.widths = [width(self.rows(i)) for i in range(steps)]

    def rows(self, i: int):
        """Host (NumPy) rows of step ``i``, trimmed."""
        from rlhf_jax.train import trim_padding

        d = self.data
        cut = (type(d)(*(None if x is None else x[self.idx[i]] for x in d)) if hasattr(d, "_asdict")
               else {k: v[self.idx[i]] for k, v in d.items()})
        return trim_padding(cut, multiple=self.multiple)

    def device_rows(self, i: int):
        import jax
        import jax.numpy as jnp

        r = self.rows(i)
        return jax.tree_util.tree_map(jnp.asarray, r)  # a NamedTuple's None fields stay None

    def warm(self, run_step) -> None:
        """``run_step(rows)`` once for each width of steps 1.. that step 0 does not have."""
        seen = {self.widths[0]}
        for i, w in enumerate(self.widths):
            if w not in seen:
                seen.add(w)
                run_step(self.device_rows(i))

    def mean_width(self, start: int = 1) -> float:
        return float(np.mean(self.widths[start:] or self.widths))


class GroupedSteps(TrimmedSteps):
    """:class:`TrimmedSteps` for grouped batches, each prompt once (``prompt_ids``/``prompt_mask``
    and the completions under ``mask_key``): the rows of each step cut per side by
    ``rlhf_jax.train.grouped_batches.grouped_rows``, as ``train_reward_model`` / ``train_dpo`` feed
    them, then passed to ``wrap`` (``dict``, or ``DPOBatch``). Widths are ``(prompt, completion)``."""

    def __init__(self, data: dict, *, batch: int, seed: int, steps: int, multiple: int = 8,
                 mask_key: str = "attention_mask", wrap=dict):
        from rlhf_jax.train import batch_indices

        self.data, self.batch, self.seed, self.multiple = data, batch, seed, multiple
        self.mask_key, self.wrap = mask_key, wrap
        n = np.shape(data["prompt_ids"])[0]
        self.idx = [batch_indices(i, n, batch, seed) for i in range(steps)]
        self.widths = [(r["prompt_ids"].shape[-1], r[mask_key].shape[-1]) for r in map(self._cut, range(steps))]

    def _cut(self, i: int) -> dict:
        from rlhf_jax.train.grouped_batches import grouped_rows

        return grouped_rows(self.data, self.idx[i], self.multiple, mask_key=self.mask_key)

    def rows(self, i: int):
        return self.wrap(**self._cut(i))

    def mean_width(self, start: int = 1) -> tuple[float, float]:
        w = np.asarray(self.widths[start:] or self.widths, np.float64)
        return float(w[:, 0].mean()), float(w[:, 1].mean())


class TrimmedStepRunner:
    """Runs a jitted ``step_fn(state, extra, rows)`` (an algorithm's ``step(state, base, batch)``) on
    the rows of :class:`TrimmedSteps`;
    ``runner(i)`` is step ``i``'s wall time (step 0 also compiles every later width). Subclasses
    set ``state``, ``step_fn``, ``extra`` (the frozen base or ``None``) and ``batches``."""

    def run(self, rows) -> None:
        import jax

        self.state, m = self.step_fn(self.state, self.extra, rows)
        jax.block_until_ready((self.state, m))

    def __call__(self, i: int) -> float:
        t0 = time.perf_counter()
        if i == 0:  # compile every batch width now, not in a measured step
            self.batches.warm(self.run)
        self.run(self.batches.device_rows(i))
        return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# output


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print(flush=True)


def ratio_line(what: str, ours: float, peer: float, *, target: float | None = None, higher_is_better: bool = True,
               unit: str = "") -> str:
    """``ratio <what>: 1.73x TRL (target >= 1.5x: met)``."""
    r = ours / peer
    s = f"ratio {what}: {r:.2f}x TRL"
    if unit:
        s += f" ({ours:,.1f} vs {peer:,.1f} {unit})"
    if target is not None:
        ok = r >= target if higher_is_better else r <= target
        s += f" (target {'>=' if higher_is_better else '<='} {target}x: {'met' if ok else 'MISSED'})"
    return s


def start_torch(omp_wait_policy: str):
    """Set torch's OMP policy (before torch is imported), quiet Hugging Face, print the machine
    line (and a warning when the machine is busy); returns ``(torch, threads)``."""
    import sys

    if "torch" not in sys.modules:
        set_omp_policy(omp_wait_policy)
    import torch

    hf_quiet()
    threads = torch_threads()
    print(f"{machine_line()}; torch {torch.__version__} ({threads} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')})", flush=True)
    if busy_warning():
        print(busy_warning(), flush=True)
    return torch, threads


def gpu_start(tiny: bool):
    """The ``--gpu`` mode's set-up: machine line, accelerator check (skipped with ``--tiny``),
    the 0.5B-class config, the matmul limit and a fresh base. Returns ``(cfg, peak, how, base)``."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.model import Transformer

    print(machine_line(), flush=True)
    if jax.default_backend() == "cpu" and not tiny:
        raise SystemExit("--gpu: no accelerator found (jax.default_backend() == 'cpu')")
    cfg = gpu_model_config(tiny=tiny)
    peak, how = matmul_limit(gpu=not tiny)
    base = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return cfg, peak, how, base
