"""Load on the labeling server: N labelers answer T tasks each, concurrently, over HTTP on
127.0.0.1 (a real `rlhf-jax label serve` subprocess; each labeler a thread with its own
keep-alive connection, doing what a browser does: next task, task page, POST the form).

Prints the answers stored, lost (acknowledged but missing or different in the database) and
duplicated, and the latency of a submission (POST until the acknowledging redirect, which the
server sends only after the SQLite commit) at p50 / p95 / max.

    python experiments/bench_label.py                      # 20 labelers x 50 tasks
    python experiments/bench_label.py --labelers 50 --tasks 40 --prompts 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rlhf_jax.label import LabelStore, PromptItem
from rlhf_jax.label.loadtest import check_answers, run_load, serve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelers", type=int, default=20, help="concurrent labelers")
    ap.add_argument("--tasks", type=int, default=50, help="tasks each labeler answers")
    ap.add_argument("--prompts", type=int, default=250, help="prompts in the database")
    ap.add_argument("--k", type=int, default=4, help="completions per prompt")
    ap.add_argument("--per-prompt", type=int, default=5, help="L, labelers per prompt")
    ap.add_argument("--resubmit-every", type=int, default=10,
                    help="each labeler also resubmits every n-th task (0: never)")
    args = ap.parse_args()
    if args.prompts * args.per_prompt < args.labelers * args.tasks:
        raise SystemExit("not enough tasks: prompts x per-prompt < labelers x tasks")
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "labels.db")
        items = [PromptItem(prompt_id=f"p{i}", prompt=f"prompt {i} <b>?</b>",
                            completions=tuple(f"completion {j} of prompt {i}" for j in range(args.k)))
                 for i in range(args.prompts)]
        store, _ = LabelStore.create(db, items, criterion="helpfulness", instructions="# Rank",
                                     instructions_id="bench", labelers_per_prompt=args.per_prompt)
        tokens = [store.add_labeler(f"labeler{i:02d}") for i in range(args.labelers)]
        with serve(db) as server:
            start = time.perf_counter()
            result = run_load(server.url, tokens, tasks_each=args.tasks,
                              resubmit_every=args.resubmit_every)
            wall = time.perf_counter() - start
        check = check_answers(db, result.acknowledged)
    print(f"{args.labelers} labelers x {args.tasks} tasks (K={args.k}, L={args.per_prompt}), "
          f"{result.submissions} acknowledged submissions ({result.submissions - len(result.acknowledged)} "
          f"resubmissions) in {wall:.1f} s = {result.submissions / wall:.0f}/s")
    print(f"stored {check['stored']} answers, lost {check['lost']}, duplicated {check['duplicated']}, "
          f"client errors {len(result.errors)}")
    print(f"submit latency: p50 {1e3 * result.percentile(0.5):.1f} ms, "
          f"p95 {1e3 * result.percentile(0.95):.1f} ms, max {1e3 * max(result.latencies):.1f} ms")
    for e in result.errors[:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
