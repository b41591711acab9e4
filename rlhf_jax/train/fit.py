"""The one training loop: every algorithm's ``step`` is run here, with the run policies in one place.

    result = fit(algo.step, state, base, batches, run=RunConfig(...), name="sft")

- the step is jitted once (state donated; on a mesh, with the state's shardings);
- ``batches(step, ctx) -> (batch, host_metrics)`` makes step ``step``'s batch, a function of the
  step (and of ``ctx.state`` for on-policy algorithms), so a resumed run sees the same data;
- resume (:class:`rlhf_jax.train.checkpoints.Checkpoints`: verified, guarded by the run record),
  checkpoints every ``run.checkpoint_every`` steps, metrics to JSONL + TensorBoard, a progress
  bar, PNG curves;
- stop rules: ``run.max_steps``, an optional ``stop(history) -> reason | None``;
- the non-finite policy: a step whose updates were all skipped (non-finite loss, gradient or
  reward) is counted; ``run.max_skipped_steps`` of them in a row stop the run with
  :class:`NonFiniteError`; the frozen base is checked at the start and the trainable state at
  every checkpoint and at the end, so nothing non-finite is ever saved or handed back.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax

from rlhf_jax.sharding import jit_step, make_mesh, shard_batch, shard_params
from rlhf_jax.train.checkpoints import Checkpoints, all_finite_leaves, run_record
from rlhf_jax.train.errors import NonFiniteError
from rlhf_jax.train.run import MetricsLogger, RunConfig

PyTree = Any


class FitContext(NamedTuple):
    """What ``batches`` and ``evaluate`` see: the current state, the (placed) base, the mesh."""

    state: PyTree
    base: PyTree
    mesh: Any
    """The device mesh (``None``: one device); place arrays with :func:`rlhf_jax.sharding.shard_batch`."""


class FitResult(NamedTuple):
    state: PyTree
    """The final state (finite: checked)."""
    history: list[dict]
    """One row of metrics per step (``step`` included), the resumed steps' rows first."""
    stop_reason: str
    """``"max_steps"`` or the reason ``stop`` gave."""
    final_eval: dict
    """``evaluate``'s metrics at the end (``{}`` without one)."""


def fit(step: Callable, state: PyTree, base: PyTree, batches: Callable[[int, FitContext], tuple[PyTree, dict]], *,
        run: RunConfig, name: str, log_keys: Sequence[str] = (), plot_keys: Sequence[str] | None = None,
        evaluate: Callable[[FitContext], dict] | None = None, eval_every: int = 0,
        stop: Callable[[list[dict]], str | None] | None = None, record: dict | None = None,
        updates_key: str = "updates") -> FitResult:
    """Run ``step`` from ``state`` until ``run.max_steps`` (see the module docstring).

    Args:
      step: an algorithm's unjitted ``step(state, base, batch) -> (state, metrics)``; its metrics
        carry ``skipped`` (cumulative skipped updates) and ``updates`` (updates per step).
      state: the initial state (``algo.init(...)``); a checkpoint replaces it when resuming.
      base: the frozen base tree (may be ``None`` when nothing is shared).
      batches: ``(step, ctx) -> (batch, host_metrics)``.
      run: the :class:`RunConfig`.
      name: run name (metrics prefix, plot file ``<name>_curves.png``).
      log_keys: metrics shown on the progress bar; ``plot_keys``: plotted (default ``log_keys``).
      evaluate: ``ctx -> metrics``, every ``eval_every`` steps and at the end.
      stop: ``history -> reason`` to stop early (checked after each step; the state is then
        checkpointed when checkpoints are on).
      record: ``{"config": ..., "data": ...}`` for the resume guard (the base's fingerprint is
        added here).
    """
    mesh = None if run.mesh is None else make_mesh(run.mesh)
    bad = None if base is None else all_finite_leaves(base)
    if bad is not None:
        raise NonFiniteError(f"{name}: the frozen base holds non-finite values in {bad}; fix or re-export the model")
    base = shard_params(base, mesh)
    state = shard_params(state, mesh)
    ckpt = Checkpoints(run, record=None if record is None else run_record(base=base, **record))
    logger = None
    try:
        state, start = ckpt.resume(state)
        jitted = jit_step(step, mesh, state)
        logger = MetricsLogger(run, name=name, keys=tuple(log_keys), total=run.max_steps, initial=start)
        reason, in_a_row = "max_steps", 0
        skipped_before = int(jax.device_get(state.skipped)) if hasattr(state, "skipped") else None
        for i in range(start, run.max_steps):
            batch, extra = batches(i, FitContext(state, base, mesh))
            state, metrics = jitted(state, base, shard_batch(batch, mesh))
            if evaluate is not None and eval_every and (i + 1) % eval_every == 0:
                extra = dict(extra, **evaluate(FitContext(state, base, mesh)))
            row = logger.log(i, dict(metrics, **extra))
            skipped = int(row.get("skipped", 0))
            if skipped_before is not None and skipped - skipped_before >= int(row.get(updates_key, 1)):
                in_a_row += 1
            else:
                in_a_row = 0
            skipped_before = skipped
            if in_a_row >= run.max_skipped_steps:
                raise NonFiniteError(
                    f"{name}: {in_a_row} steps in a row (to step {i}) skipped every update for a non-finite loss, "
                    f"gradient or reward; stopping (the last good checkpoint stays). Check the data, the reward "
                    f"and the learning rate")
            ckpt.maybe_save(i + 1, state)
            why = None if stop is None else stop(logger.history)
            if why:
                reason = why
                ckpt.maybe_save(i + 1, state, force=True)
                break
        bad = all_finite_leaves(state)
        if bad is not None:
            raise NonFiniteError(f"{name}: the trained state holds non-finite values in {bad} at the end; "
                                 "nothing is exported (the last good checkpoint stays)")
        final = {} if evaluate is None else evaluate(FitContext(state, base, mesh))
        if final and logger.history:
            logger.history[-1].update(final)
        return FitResult(state, logger.history, reason, final)
    finally:
        if logger is not None:
            logger.close(plot_keys=plot_keys or log_keys)
        ckpt.close()
