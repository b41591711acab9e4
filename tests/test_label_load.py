"""Load and faults on the labeling server, over HTTP on 127.0.0.1 (a real `label serve`
subprocess): 20 labelers x 50 tasks concurrently lose and duplicate nothing; kill -9 during
submissions loses no acknowledged answer."""

import threading
import time

import pytest

from rlhf_jax.label import LabelStore, PromptItem
from rlhf_jax.label.loadtest import LabelerClient, LoadResult, check_answers, run_load, serve


def _db(path, *, prompts, per_prompt, labelers, k=4):
    items = [PromptItem(prompt_id=f"p{i}", prompt=f"prompt {i}",
                        completions=tuple(f"completion {j} of {i}" for j in range(k)))
             for i in range(prompts)]
    store, _ = LabelStore.create(path, items, criterion="helpfulness", instructions="# Rank",
                                 instructions_id="load", labelers_per_prompt=per_prompt)
    return [store.add_labeler(f"l{i:02d}") for i in range(labelers)]


@pytest.mark.slow
def test_20_labelers_x_50_tasks_concurrently(tmp_path):
    db = str(tmp_path / "l.db")
    tokens = _db(db, prompts=250, per_prompt=5, labelers=20)  # 1250 slots for 1000 answers
    with serve(db) as server:
        start = time.perf_counter()
        result = run_load(server.url, tokens, tasks_each=50, resubmit_every=10)
        wall = time.perf_counter() - start
    check = check_answers(db, result.acknowledged)
    print(f"\n20 labelers x 50 tasks: {result.submissions} acknowledged submissions in {wall:.1f} s; "
          f"stored {check['stored']}, lost {check['lost']}, duplicated {check['duplicated']}; "
          f"submit latency p50 {1e3 * result.percentile(0.5):.0f} ms, "
          f"p95 {1e3 * result.percentile(0.95):.0f} ms")
    assert result.errors == []
    assert result.submissions == 1100 and len(result.acknowledged) == 1000  # 100 resubmissions
    assert check == {"stored": 1000, "duplicated": 0, "lost": 0, "lost_tasks": []}
    # each prompt went to at most L = 5 distinct labelers, each labeler answered exactly 50
    store = LabelStore(db)
    assert all(r["done"] == 50 for r in store.labeler_counts())
    con = store._con()
    assert con.execute("SELECT MAX(n) FROM (SELECT COUNT(DISTINCT labeler) AS n FROM answers "
                       "GROUP BY prompt)").fetchone()[0] <= 5


@pytest.mark.slow
def test_kill_9_during_submissions_loses_no_acknowledged_answer(tmp_path):
    db = str(tmp_path / "l.db")
    tokens = _db(db, prompts=400, per_prompt=4, labelers=8)
    result, stop = LoadResult(), threading.Event()
    with serve(db) as server:
        load = threading.Thread(target=run_load, args=(server.url, tokens),
                                kwargs=dict(tasks_each=200, stop=stop, into=result))
        load.start()
        deadline = time.monotonic() + 120  # generous: CI runs other tests beside this one
        while len(result.acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill9()  # mid-stream: clients have requests in flight
        n_at_kill = len(result.acknowledged)
        load.join(timeout=60)
        assert not load.is_alive()
    assert n_at_kill >= 150 and len(result.errors) == len(tokens)  # every client lost the server
    with serve(db) as server:  # restart on the same file
        check = check_answers(db, result.acknowledged)
        assert check["lost"] == 0 and check["duplicated"] == 0, check
        assert check["stored"] >= len(result.acknowledged)  # + any committed but unacknowledged
        client = LabelerClient(server.url, tokens[0])  # the restarted server takes answers
        client.login()
        task = client.next_task()
        csrf, k = client.open_task(task)
        client.submit(task, [str(i + 1) for i in range(k)], csrf)
        client.close()
    assert check_answers(db, {})["stored"] == check["stored"] + 1
