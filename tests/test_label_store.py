"""The labeling store: ranking validation, assignment to L distinct labelers, upsert on
resubmit, hashed tokens, sessions, export through the feedback module, and `label init`."""

import json
import sqlite3

import pytest

from rlhf_jax import feedback as fb
from rlhf_jax.label import LabelError, LabelStore, TaskNotFound, export_ranked, parse_ranking
from rlhf_jax.label import cli as label_cli
from rlhf_jax.label.tokens import hash_secret
from tests.label_fixtures import DOG, HOT, answer_in_display_order, labeler_id, make_db


def test_parse_ranking_competition_ranks_ties_and_flags():
    # given 1, 3, 3, F: the unflagged numbers 1 < 3 = 3 -> ranks 1, 2, 2 ("1224" style), F -> None
    assert parse_ranking(["1", "3", "3", "F"]) == ((1, 2, 2, None), (3,))
    assert parse_ranking(["2", "1", "3", "4"]) == ((2, 1, 3, 4), ())
    assert parse_ranking(["f", "F", "1"]) == ((None, None, 1), (0, 1))
    assert parse_ranking([4, 4, 4, 4]) == ((1, 1, 1, 1), ())  # all tied
    for bad, why in [(["1", "", "2"], "completion 2 has no rank"),
                     (["1", "5", "2"], "rank 5 is out of range 1..3"),
                     (["1", "x", "2"], "'x' is not a number"), (["0", "1"], "out of range"),
                     (["1", "-1"], "is not a number"), ([], "no completions")]:
        with pytest.raises(LabelError, match=why):
            parse_ranking(bad)


def test_each_prompt_goes_to_L_distinct_labelers(tmp_path):
    store, _, tokens = make_db(tmp_path / "l.db", per_prompt=2, labelers=("a", "b", "c"))
    ids = {n: labeler_id(t) for n, t in tokens.items()}
    got = {}
    for name in ("a", "b", "c"):
        got[name] = []
        while (t := store.next_task(ids[name])) is not None:
            assert store.next_task(ids[name]) == t  # an open task is handed out again, not a new one
            store.submit(ids[name], t, [str(i + 1) for i in range(len(store.task(ids[name], t).completions))])
            got[name].append(store.task(ids[name], t).prompt_id)
    # L = 2: a and b take both prompts (prompts closest to L first), c finds nothing left
    assert sorted(got["a"]) == sorted(got["b"]) == ["dog", "hot"] and got["c"] == []
    con = sqlite3.connect(store.path)
    per_prompt = con.execute("SELECT prompt, COUNT(DISTINCT labeler), COUNT(*) FROM answers "
                             "GROUP BY prompt").fetchall()
    assert [(n, m) for _, n, m in per_prompt] == [(2, 2), (2, 2)]


def test_skip_frees_the_slot_for_someone_else(tmp_path):
    store, _, tokens = make_db(tmp_path / "l.db", items=(HOT,), per_prompt=1, labelers=("a", "b"))
    a, b = labeler_id(tokens["a"]), labeler_id(tokens["b"])
    t = store.next_task(a)
    assert store.next_task(b) is None  # the only slot is held by a
    store.skip(a, t)
    assert store.next_task(a) is None  # a does not get it back
    tb = store.next_task(b)
    assert tb is not None and tb != t
    with pytest.raises(LabelError, match="skipped"):
        store.submit(a, t, ["1", "2", "3", "4"])


def test_resubmit_replaces_never_duplicates_and_tasks_are_private(tmp_path):
    store, _, tokens = make_db(tmp_path / "l.db", items=(HOT,))
    ann, bob = labeler_id(tokens["ann"]), labeler_id(tokens["bob"])
    t = store.next_task(ann)
    first = {HOT.completions[0]: "2", HOT.completions[1]: "1", HOT.completions[2]: "3",
             HOT.completions[3]: "F"}
    assert store.submit(ann, t, answer_in_display_order(store, ann, t, first)) == 1
    second = dict(first, **{HOT.completions[2]: "2"})  # now a tie with completion 0
    assert store.submit(ann, t, answer_in_display_order(store, ann, t, second)) == 2
    rows = sqlite3.connect(store.path).execute("SELECT ranking, flagged, revision FROM answers").fetchall()
    assert rows == [("[2, 1, 2, null]", "[3]", 2)]
    with pytest.raises(TaskNotFound):
        store.task(bob, t)
    with pytest.raises(TaskNotFound):
        store.submit(bob, t, ["1", "1", "1", "1"])
    with pytest.raises(LabelError, match="3 ranks for 4 completions"):
        store.submit(ann, t, ["1", "2", "3"])
    assert store.task(ann, t).answer == tuple(second[c] for c in store.task(ann, t).completions)


def test_tokens_are_stored_hashed_and_checked(tmp_path):
    store, admin, tokens = make_db(tmp_path / "l.db")
    raw = (tmp_path / "l.db").read_bytes() + (tmp_path / "l.db-wal").read_bytes()
    for tok in (admin, *tokens.values()):
        secret = tok.split(".")[1]
        assert secret.encode() not in raw and hash_secret(secret).encode() in raw
    sid, session = store.login(tokens["ann"])
    assert session.name == "ann" and not session.is_admin and store.session(sid) == session
    assert sid.encode() not in (tmp_path / "l.db-wal").read_bytes()
    ann_id, secret = tokens["ann"].split(".")
    bob_secret = tokens["bob"].split(".")[1]
    for bad in (f"{ann_id}.{bob_secret}", f"{ann_id}.{secret[:-1]}x", "a." + secret, "999." + secret,
                "nonsense", f"{ann_id}.{secret}/../x"):
        assert store.login(bad) is None, bad
    assert store.login(admin)[1].is_admin
    new = store.add_labeler("ann", new_token=True)  # re-issue: the old link and sessions die
    assert store.login(tokens["ann"]) is None and store.session(sid) is None
    assert store.login(new)[1].name == "ann"
    with pytest.raises(LabelError, match="exists"):
        store.add_labeler("ann")


def test_export_validates_in_the_feedback_module(tmp_path):
    store, _, tokens = make_db(tmp_path / "l.db")
    ann, bob = labeler_id(tokens["ann"]), labeler_id(tokens["bob"])
    by_text = {"ann": {HOT.completions[0]: "2", HOT.completions[1]: "1", HOT.completions[2]: "2",
                       HOT.completions[3]: "F"},
               "bob": {HOT.completions[0]: "3", HOT.completions[1]: "1", HOT.completions[2]: "2",
                       HOT.completions[3]: "4"}}
    for name, lid in (("ann", ann), ("bob", bob)):
        t = store.next_task(lid)
        assert store.task(lid, t).prompt_id == "hot"
        store.submit(lid, t, answer_in_display_order(store, lid, t, by_text[name]))
    report = export_ranked(store, tmp_path / "ranked.jsonl")
    assert (report.prompts, report.labels, report.prompts_unlabeled, report.prompts_complete) == (1, 2, 1, 1)
    records, _ = fb.read_ranked(tmp_path / "ranked.jsonl", strict=True)
    (rec,) = records
    assert rec.prompt_id == "hot" and rec.completions == HOT.completions and rec.instructions_id == "test-v1"
    assert [(lb.labeler, lb.ranking, lb.flagged) for lb in rec.labels] == [
        ("ann", (2, 1, 2, None), (3,)), ("bob", (3, 1, 2, 4), ())]
    # consensus by hand (Borda): completion 3 flagged by 1 of 2 -> kept; ann's view puts it last.
    # ann fractional ranks over (0,1,2,3): (2.5, 1, 2.5, 4); bob: (3, 1, 2, 4) -> sums 5.5, 2, 4.5, 8
    # -> consensus 3, 1, 2, 4: bob agrees on all 6 pairs, ann ties (0, 2) -> 5 of 6.
    table = fb.build_consensus(records).table
    assert [(r.labeler, r.agreed, r.pairs) for r in table.rows] == [("bob", 6, 6), ("ann", 5, 6)]


def test_init_from_completions_file_and_errors(tmp_path, capsys):
    comps = tmp_path / "c.jsonl"
    comps.write_text("".join(json.dumps(x) + "\n" for x in [
        {"prompt_id": "hot", "prompt": HOT.prompt, "completions": list(HOT.completions)},
        {"prompt": DOG.prompt, "completions": list(DOG.completions)}]))
    db = str(tmp_path / "l.db")
    assert label_cli.main(["init", db, "--completions", str(comps), "--labelers-per-prompt", "2",
                           "--criterion", "harmlessness"]) == 0
    out = capsys.readouterr().out
    assert "2 prompts, 7 completions, 2 labelers per prompt" in out and "/login/a." in out
    store = LabelStore(db)
    assert store.criterion == "harmlessness" and store.instructions_id == fb.LABELER_INSTRUCTIONS_ID
    assert "rank the completions by harmlessness" in store.instructions
    assert label_cli.main(["add-labeler", db, "eve"]) == 0
    assert "/login/1." in capsys.readouterr().out
    assert label_cli.main(["init", db, "--completions", str(comps)]) == 1
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completions": ["only one"]}) + "\n")
    assert label_cli.main(["init", str(tmp_path / "x.db"), "--completions", str(bad)]) == 1
    assert f"{bad}:1: field 'completions': 1 completion(s); ranking needs at least 2" in capsys.readouterr().err
    dup = tmp_path / "dup.jsonl"
    dup.write_text(2 * (json.dumps({"prompt_id": "a", "prompt": "p", "completions": ["x", "y"]}) + "\n"))
    assert label_cli.main(["init", str(tmp_path / "y.db"), "--completions", str(dup)]) == 1
    assert f"{dup}:2: field 'prompt_id': 'a' already used on line 1" in capsys.readouterr().err


@pytest.mark.slow  # compiles the sampler
def test_init_from_model_folder_samples_k_completions(tmp_path, capsys):
    import dataclasses

    import jax
    import numpy as np

    from rlhf_jax.export import save_hf_folder
    from rlhf_jax.model import Transformer
    from tests.trainer_fixtures import tiny_config, tiny_tokenizer

    cfg = dataclasses.replace(tiny_config(), num_layers=1)  # random weights, no init compile
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes["params"])
    save_hf_folder(tmp_path / "model", cfg, params, tokenizer=tiny_tokenizer())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["w1 w2", "w3", "w4 w5 w6"]))
    db = str(tmp_path / "l.db")
    assert label_cli.main(["init", db, "--prompts", str(prompts), "--model", str(tmp_path / "model"),
                           "--k", "3", "--max-new-tokens", "5", "--batch-size", "4"]) == 0
    assert "3 prompts, 9 completions" in capsys.readouterr().out
    rows = sqlite3.connect(db).execute("SELECT prompt_id, prompt, completions FROM prompts").fetchall()
    assert [r[:2] for r in rows] == [("p1", "w1 w2"), ("p2", "w3"), ("p3", "w4 w5 w6")]
    for _, _, comps in rows:
        texts = json.loads(comps)
        assert len(texts) == 3 and all(set(t.split()) <= {f"w{i}" for i in range(16)} for t in texts)
        assert not any("</s>" in t or "<pad>" in t for t in texts)  # special tokens removed


def test_bind_warning():
    assert label_cli.bind_warning("127.0.0.1") is None and label_cli.bind_warning("::1") is None
    assert label_cli.bind_warning("localhost") is None
    assert "warning: serving on 0.0.0.0" in label_cli.bind_warning("0.0.0.0")


def test_completions_file_lines_are_read_by_the_data_layer_reader(tmp_path):
    from rlhf_jax.label.sources import _rows

    p = tmp_path / "c.jsonl"
    p.write_text('{"a": 1}\n\n[1]\n')
    with pytest.raises(LabelError, match=r"c.jsonl:3: each line must be a JSON object"):
        list(_rows(p))
    p.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert list(_rows(p)) == [(1, {"a": 1}), (3, {"b": 2})]
