"""Checkpoints you can trust: orbax saves with a checksum manifest per step, verified before any
restore (a corrupt or incomplete step is named in one line, moved aside, and the newest intact one
is used), and a run record (config, base model and data fingerprints) that decides whether a run
folder may be resumed.

Layout under ``out_dir``: ``checkpoints/<step>/`` (orbax), ``checkpoint_manifests/<step>.json``
(sha256 of every file of the step, written once the step is complete), ``run_record.json``, and
``corrupt_checkpoints/<step>/`` for steps that failed verification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.train.errors import CheckpointError, NonFiniteError
from rlhf_jax.train.run import RunConfig

PyTree = Any

RESUMABLE_CHANGES = ("run.max_steps", "run.progress", "run.tensorboard", "run.checkpoint_every",
                     "run.keep_checkpoints", "run.resume", "run.out_dir", "run.max_skipped_steps", "eval_every")
"""Config fields a resumed run may change (how long, how often, what is shown); any other
difference refuses ``resume="auto"``."""


def _flat_config(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        config = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(config or {}, "")
    return out


def tree_fingerprint(tree: PyTree) -> str:
    """A short sha256 of a pytree: every leaf's path, shape, dtype and up to 65,536 of its values
    (evenly strided, taken on the device, so a multi-GiB base costs a small transfer). Equal trees
    give equal prints; a changed, re-cast or re-shaped tensor almost surely changes it."""
    from rlhf_jax.sharding import path_string

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, (str, bytes, int, float, bool)) or leaf is None:
            h.update(repr((path_string(path), leaf)).encode())
            continue
        x = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
        h.update(f"{path_string(path)}|{x.shape}|{x.dtype}".encode())
        flat = x.reshape(-1)
        stride = max(1, flat.shape[0] // 65536)
        sample = np.asarray(jax.device_get(flat[::stride] if isinstance(x, jax.Array) else flat[::stride]))
        if sample.dtype == jnp.bfloat16:
            sample = sample.view(np.uint16)
        h.update(np.ascontiguousarray(sample).tobytes())
    return h.hexdigest()[:16]


def run_record(*, config: Any = None, base: PyTree = None, data: PyTree = None) -> dict:
    """What a run folder records: the flattened config, and fingerprints of the base and the data."""
    return {"config": _flat_config(config), "base": None if base is None else tree_fingerprint(base),
            "data": None if data is None else tree_fingerprint(data)}


def record_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two run records, ignoring :data:`RESUMABLE_CHANGES`."""
    out = []
    oc, nc = old.get("config", {}), new.get("config", {})
    for k in sorted(set(oc) | set(nc)):
        if k in RESUMABLE_CHANGES or oc.get(k) == nc.get(k):
            continue
        out.append(f"{k}: {oc.get(k, '(absent)')!r} -> {nc.get(k, '(absent)')!r}")
    for k, what in (("base", "base model weights"), ("data", "training data")):
        if old.get(k) != new.get(k) and old.get(k) is not None and new.get(k) is not None:
            out.append(f"{what}: fingerprint {old[k]} -> {new[k]}")
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: str) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = _sha256(p)
    return out


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def all_finite_leaves(tree: PyTree) -> str | None:
    """The path of the first array leaf holding a NaN or infinity, or ``None``."""
    from rlhf_jax.sharding import path_string

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(leaf))):
            return path_string(path)
    return None


class Checkpoints:
    """Verified orbax checkpoints of a training state under ``out_dir`` (see the module docstring).

    ``resume(template)`` applies ``run.resume`` and returns ``(state, first step)``;
    ``maybe_save(step, state)`` saves every ``run.checkpoint_every`` steps, then writes the step's
    manifest."""

    def __init__(self, run: RunConfig, *, record: dict | None = None):
        self.run, self.record = run, record
        self.manager = None
        self.root = None if run.out_dir is None else os.path.abspath(run.out_dir)
        if self.root is not None:
            self.ckpt_dir = os.path.join(self.root, "checkpoints")
            self.manifest_dir = os.path.join(self.root, "checkpoint_manifests")

    # ---- discovery and verification
    def _steps_on_disk(self) -> list[int]:
        if self.root is None or not os.path.isdir(self.ckpt_dir):
            return []
        return sorted(int(n) for n in os.listdir(self.ckpt_dir)
                      if n.isdigit() and os.path.isdir(os.path.join(self.ckpt_dir, n)))

    def verify(self, step: int) -> str | None:
        """``None`` when step ``step`` is complete and every file matches its checksum, else why not."""
        mpath = os.path.join(self.manifest_dir, f"{step}.json")
        if not os.path.isfile(mpath):
            return "no manifest (the save did not finish)"
        try:
            with open(mpath) as f:
                expected = json.load(f)["files"]
        except (OSError, ValueError, KeyError):
            return "unreadable manifest"
        actual = _files(os.path.join(self.ckpt_dir, str(step)))
        for name, digest in sorted(expected.items()):
            if name not in actual:
                return f"file {name} is missing"
            if actual[name] != digest:
                return f"file {name} does not match its checksum"
        extra = sorted(set(actual) - set(expected))
        return f"unexpected file {extra[0]}" if extra else None

    def _set_aside(self, step: int, why: str) -> None:
        dest = os.path.join(self.root, "corrupt_checkpoints", str(step))
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if self.manager is not None:  # it has seen this step: start a fresh one after the move
            self.manager.close()
            self.manager = None
        shutil.move(os.path.join(self.ckpt_dir, str(step)), dest)
        mpath = os.path.join(self.manifest_dir, f"{step}.json")
        if os.path.exists(mpath):
            os.remove(mpath)
        print(f"checkpoint step {step} in {self.ckpt_dir} is not usable ({why}); moved to {dest}", file=sys.stderr)

    def _manager(self):
        if self.manager is None:
            import orbax.checkpoint as ocp

            self.manager = ocp.CheckpointManager(
                self.ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=self.run.keep_checkpoints, create=True))
        return self.manager

    # ---- resume
    def resume(self, template: PyTree) -> tuple[PyTree, int]:
        """``(state, first step)`` according to ``run.resume``; writes the run record of a fresh run."""
        if self.root is None:
            return template, 0
        steps = self._steps_on_disk()
        record_path = os.path.join(self.root, "run_record.json")
        policy = self.run.resume
        if steps and policy == "never":
            for d in (self.ckpt_dir, self.manifest_dir):
                shutil.rmtree(d, ignore_errors=True)
            print(f"{self.root}: resume='never': removed {len(steps)} earlier checkpoint(s), starting at step 0",
                  file=sys.stderr)
            steps = []
        if steps and self.record is not None and os.path.isfile(record_path):
            with open(record_path) as f:
                old = json.load(f)
            diffs = record_differences(old, self.record)
            if diffs and policy != "force":
                raise CheckpointError(
                    f"{self.root} holds a run with a different setup ({'; '.join(diffs)}); "
                    "resume anyway with --run.resume force, start afresh with --run.resume never, or use another --out")
            if diffs:
                print(f"{self.root}: resume='force' with changes: {'; '.join(diffs)}", file=sys.stderr)
        if self.record is not None and not steps:
            os.makedirs(self.root, exist_ok=True)
            _write_json(record_path, self.record)
        reasons = []
        for step in reversed(steps):
            why = self.verify(step)
            if why is None:
                try:
                    state = self._restore(step, template)
                except Exception as e:  # a corrupt file that matched its checksum, a changed state layout
                    why = f"restore failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                else:
                    print(f"resuming from step {step} ({self.ckpt_dir})", file=sys.stderr)
                    return state, step
            reasons.append(f"step {step}: {why}")
            self._set_aside(step, why)
        if steps:
            raise CheckpointError(f"{self.ckpt_dir}: no intact checkpoint to resume from ({'; '.join(reasons)}); "
                                  "start afresh with --run.resume never")
        return template, 0

    def _restore(self, step: int, template: PyTree) -> PyTree:
        import orbax.checkpoint as ocp

        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        return self._manager().restore(step, args=ocp.args.StandardRestore(abstract))

    # ---- save
    def maybe_save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
        every = self.run.checkpoint_every
        if self.root is None or every <= 0 or (step % every and not force):
            return False
        import orbax.checkpoint as ocp

        bad = all_finite_leaves(state)
        if bad is not None:
            raise NonFiniteError(f"step {step}: the training state holds non-finite values in {bad}; "
                                 f"not saved (the last good checkpoint in {self.ckpt_dir} stays)")
        manager = self._manager()
        if step in manager.all_steps():  # already saved (a stop rule right after a periodic save)
            return False
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
        os.makedirs(self.manifest_dir, exist_ok=True)
        _write_json(os.path.join(self.manifest_dir, f"{step}.json"),
                    {"step": step, "files": _files(os.path.join(self.ckpt_dir, str(step)))})
        kept = set(self._steps_on_disk())
        for name in os.listdir(self.manifest_dir):  # orbax removed old steps: drop their manifests
            stem = name.split(".")[0]
            if stem.isdigit() and int(stem) not in kept:
                os.remove(os.path.join(self.manifest_dir, name))
        return True

    def close(self):
        if self.manager is not None:
            self.manager.close()


def restore_raw(run_dir: str, step: int | None = None) -> tuple[dict, int]:
    """The training state saved under ``run_dir/checkpoints`` as nested dicts of arrays (no
    template), from the newest intact (verified) step or ``step``."""
    import orbax.checkpoint as ocp

    ck = Checkpoints(RunConfig(out_dir=run_dir))
    steps = ck._steps_on_disk()
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoints (run with --run.checkpoint_every N)")
    candidates = [step] if step is not None else list(reversed(steps))
    for s in candidates:
        if s not in steps:
            raise FileNotFoundError(f"{run_dir}: no checkpoint at step {s} (have {steps})")
        why = ck.verify(s)
        if why is None:
            manager = ocp.CheckpointManager(ck.ckpt_dir)
            state = manager.restore(s, args=ocp.args.StandardRestore())
            manager.close()
            return state, int(s)
        print(f"checkpoint step {s} in {ck.ckpt_dir} is not usable ({why})", file=sys.stderr)
    raise CheckpointError(f"{run_dir}: no intact checkpoint")


def trainable_from_raw(raw: PyTree, lora) -> PyTree:
    """A trainable tree restored without a template (:func:`restore_raw`) back in its type: an
    :class:`rlhf_jax.lora.Adapter` (``raw = {"tree": ...}``) when the run's config names an
    adapter ``lora``, the full parameter tree when ``lora`` is ``None``."""
    from rlhf_jax.lora import Adapter

    if lora is None:
        return raw
    if not isinstance(raw, dict) or "tree" not in raw:
        raise CheckpointError("the checkpoint holds a full parameter tree but the run's config names a LoRA adapter")
    return Adapter(raw["tree"], lora)


def check_base(run_dir: str, base: PyTree, source: str) -> None:
    """Raise when ``base`` is not the base the run in ``run_dir`` trained over (its recorded
    fingerprint); runs without a record pass."""
    path = os.path.join(run_dir, "run_record.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        recorded = json.load(f).get("base")
    if recorded is not None and recorded != tree_fingerprint(base):
        raise CheckpointError(f"{source} is not the base model the run in {run_dir} trained over (fingerprint "
                              f"{tree_fingerprint(base)}, recorded {recorded}); pass the same --model and --dtype")
