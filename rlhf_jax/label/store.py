"""The labeling database: one SQLite file (standard-library `sqlite3`, WAL mode).

Tables: ``meta`` (criterion, instructions, labelers per prompt, the admin token's hash),
``prompts`` (a prompt and its completions), ``labelers`` (name and token hash), ``assignments``
(a *task*: one prompt given to one labeler, with the labeler's own random display order;
UNIQUE(prompt, labeler)), ``answers`` (one row per task: ranking and flags in storage order;
UNIQUE(assignment) and UNIQUE(prompt, labeler), so a resubmission replaces the answer by an
upsert and never adds a second row) and ``sessions`` (hashed session id, CSRF token).

Durability: every write is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL`` before the caller (the web app) answers, so an acknowledged answer survives
kill -9 of the server (and a power cut). Assignment happens inside the same kind of transaction,
so two labelers asking at once cannot give a prompt more than L active labelers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
from typing import Iterator, Sequence

from rlhf_jax.label import tokens as tk
from rlhf_jax.label.ranking import LabelError, TaskNotFound, parse_ranking
from rlhf_jax.label.records import PromptItem, Session, Task

SCHEMA_VERSION = 1
SESSION_SECONDS = 30 * 24 * 3600

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE prompts (id INTEGER PRIMARY KEY, prompt_id TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL,
                      completions TEXT NOT NULL);
CREATE TABLE labelers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL,
                       created REAL NOT NULL);
CREATE TABLE assignments (id INTEGER PRIMARY KEY, prompt INTEGER NOT NULL REFERENCES prompts(id),
                          labeler INTEGER NOT NULL REFERENCES labelers(id),
                          display_order TEXT NOT NULL,
                          status TEXT NOT NULL CHECK (status IN ('open', 'done', 'skipped')),
                          assigned_at REAL NOT NULL, UNIQUE (prompt, labeler));
CREATE INDEX assignments_by_labeler ON assignments (labeler, status);
CREATE TABLE answers (id INTEGER PRIMARY KEY,
                      assignment INTEGER NOT NULL UNIQUE REFERENCES assignments(id),
                      prompt INTEGER NOT NULL REFERENCES prompts(id),
                      labeler INTEGER NOT NULL REFERENCES labelers(id),
                      ranking TEXT NOT NULL, flagged TEXT NOT NULL, submitted_at REAL NOT NULL,
                      revision INTEGER NOT NULL DEFAULT 1, UNIQUE (prompt, labeler));
CREATE TABLE sessions (id_hash TEXT PRIMARY KEY, labeler INTEGER REFERENCES labelers(id),
                       is_admin INTEGER NOT NULL, csrf TEXT NOT NULL, created REAL NOT NULL);
"""


class LabelStore:
    """A labeling database (see the module docstring). Safe to share between threads: each
    thread gets its own connection."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise LabelError(f"{self.path}: no such labeling database (create it with "
                             "`rlhf-jax label init`)")
        self._local = threading.local()
        self._write_lock = threading.Lock()  # one writer at a time in this process: no busy waits
        try:
            meta = dict(self._con().execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise LabelError(f"{self.path}: not a labeling database ({e})") from e
        if json.loads(meta.get("schema_version", "0")) != SCHEMA_VERSION:
            raise LabelError(f"{self.path}: schema version {meta.get('schema_version')} is not "
                             f"{SCHEMA_VERSION}; re-create it with this version's `label init`")
        self.criterion: str = json.loads(meta["criterion"])
        self.instructions: str = json.loads(meta["instructions"])
        self.instructions_id: str = json.loads(meta["instructions_id"])
        self.labelers_per_prompt: int = json.loads(meta["labelers_per_prompt"])

    @classmethod
    def create(cls, path: str | os.PathLike, items: Sequence[PromptItem], *, criterion: str,
               instructions: str, instructions_id: str,
               labelers_per_prompt: int) -> tuple["LabelStore", str]:
        """Write a new database; returns it and the admin login token (shown once)."""
        path = os.fspath(path)
        if os.path.exists(path):
            raise LabelError(f"{path}: already exists; choose another path or delete it")
        if labelers_per_prompt < 1:
            raise LabelError(f"labelers per prompt must be >= 1, got {labelers_per_prompt}")
        if not items:
            raise LabelError("no prompts to label")
        ids = [it.prompt_id for it in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise LabelError(f"prompt_id {dup!r} appears more than once; ids must be unique")
        secret = tk.new_secret()
        meta = {"schema_version": SCHEMA_VERSION, "criterion": criterion,
                "instructions": instructions, "instructions_id": instructions_id,
                "labelers_per_prompt": labelers_per_prompt,
                "admin_token_hash": tk.hash_secret(secret)}
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("BEGIN")
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                con.execute(stmt)
            con.executemany("INSERT INTO meta VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in meta.items()])
            con.executemany("INSERT INTO prompts (prompt_id, prompt, completions) VALUES (?, ?, ?)",
                            [(it.prompt_id, it.prompt, json.dumps(list(it.completions)))
                             for it in items])
            con.execute("COMMIT")
        finally:
            con.close()
        return cls(path), tk.make_token(tk.ADMIN, secret)

    # -- connections -------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
        return con

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back on an error."""
        con = self._con()
        with self._write_lock:
            con.execute("BEGIN IMMEDIATE")  # also locks out other processes (e.g. add-labeler)
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- labelers, tokens, sessions ----------------------------------------------------------
    def add_labeler(self, name: str, *, new_token: bool = False) -> str:
        """Add a labeler (or, with ``new_token``, re-issue an existing one's token, which logs
        out their sessions); returns the login token."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise LabelError(f"labeler name {name[:70]!r}: use 1-64 printable characters")
        if name.lower() == "admin":
            raise LabelError("labeler name 'admin' is reserved")
        secret = tk.new_secret()
        with self._write() as con:
            row = con.execute("SELECT id FROM labelers WHERE name = ?", (name,)).fetchone()
            if row and not new_token:
                raise LabelError(f"labeler {name!r} exists; pass --new-token to re-issue the link")
            if not row and new_token:
                raise LabelError(f"no labeler named {name!r}")
            if row:
                con.execute("UPDATE labelers SET token_hash = ? WHERE id = ?",
                            (tk.hash_secret(secret), row[0]))
                con.execute("DELETE FROM sessions WHERE labeler = ?", (row[0],))
                who = row[0]
            else:
                who = con.execute("INSERT INTO labelers (name, token_hash, created) VALUES "
                                  "(?, ?, ?)", (name, tk.hash_secret(secret), time.time())).lastrowid
        return tk.make_token(who, secret)

    def new_admin_token(self) -> str:
        """Replace the admin token (old admin links and sessions stop working)."""
        secret = tk.new_secret()
        with self._write() as con:
            con.execute("UPDATE meta SET value = ? WHERE key = 'admin_token_hash'",
                        (json.dumps(tk.hash_secret(secret)),))
            con.execute("DELETE FROM sessions WHERE is_admin = 1")
        return tk.make_token(tk.ADMIN, secret)

    def login(self, token: str) -> tuple[str, Session] | None:
        """Check a login token; on success open a session: ``(session id, session)``."""
        parts = tk.split_token(token)
        if parts is None:
            return None
        who, secret = parts
        con = self._con()
        if who == tk.ADMIN:
            row = con.execute("SELECT value FROM meta WHERE key = 'admin_token_hash'").fetchone()
            stored, labeler, name = (json.loads(row[0]) if row else None), None, "admin"
        else:
            row = con.execute("SELECT token_hash, id, name FROM labelers WHERE id = ?",
                              (int(who),)).fetchone()
            stored, labeler, name = row if row else (None, None, "")
        if not tk.same_hash(secret, stored):
            return None
        sid, csrf = tk.new_secret(), tk.new_secret()
        with self._write() as con:
            con.execute("DELETE FROM sessions WHERE created < ?", (time.time() - SESSION_SECONDS,))
            con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                        (tk.hash_secret(sid), labeler, int(labeler is None), csrf, time.time()))
        return sid, Session(labeler_id=labeler, name=name, is_admin=labeler is None, csrf=csrf)

    def session(self, sid: str | None) -> Session | None:
        """The session of a session id (from the cookie), or None (unknown or expired)."""
        if not sid or len(sid) > 100:
            return None
        row = self._con().execute(
            "SELECT s.labeler, COALESCE(l.name, 'admin'), s.is_admin, s.csrf FROM sessions s "
            "LEFT JOIN labelers l ON l.id = s.labeler WHERE s.id_hash = ? AND s.created >= ?",
            (tk.hash_secret(sid), time.time() - SESSION_SECONDS)).fetchone()
        if row is None:
            return None
        return Session(labeler_id=row[0], name=row[1], is_admin=bool(row[2]), csrf=row[3])

    def logout(self, sid: str) -> None:
        """End a session."""
        with self._write() as con:
            con.execute("DELETE FROM sessions WHERE id_hash = ?", (tk.hash_secret(sid),))

    # -- tasks -------------------------------------------------------------------------------
    def next_task(self, labeler_id: int) -> int | None:
        """The labeler's open task, else a new one, else None (nothing left for them).

        A new task is a prompt this labeler has never been given whose active (open or done)
        labelers number fewer than L; prompts closest to L come first, so consensus forms early.
        """
        with self._write() as con:
            row = con.execute("SELECT id FROM assignments WHERE labeler = ? AND status = 'open' "
                              "ORDER BY id LIMIT 1", (labeler_id,)).fetchone()
            if row:
                return row[0]
            row = con.execute(
                "SELECT p.id, p.completions, COALESCE(a.n, 0) AS n FROM prompts p LEFT JOIN "
                "(SELECT prompt, COUNT(*) AS n FROM assignments WHERE status != 'skipped' "
                " GROUP BY prompt) a ON a.prompt = p.id "
                "WHERE COALESCE(a.n, 0) < ? AND NOT EXISTS (SELECT 1 FROM assignments x "
                " WHERE x.prompt = p.id AND x.labeler = ?) ORDER BY n DESC, p.id LIMIT 1",
                (self.labelers_per_prompt, labeler_id)).fetchone()
            if row is None:
                return None
            order = list(range(len(json.loads(row[1]))))
            random.SystemRandom().shuffle(order)
            return con.execute(
                "INSERT INTO assignments (prompt, labeler, display_order, status, assigned_at) "
                "VALUES (?, ?, ?, 'open', ?)",
                (row[0], labeler_id, json.dumps(order), time.time())).lastrowid

    def _assignment(self, con, labeler_id: int, task_id: int):
        row = con.execute(
            "SELECT a.prompt, a.display_order, a.status, p.prompt_id, p.prompt, p.completions "
            "FROM assignments a JOIN prompts p ON p.id = a.prompt WHERE a.id = ? AND a.labeler = ?",
            (task_id, labeler_id)).fetchone()
        if row is None:  # also another labeler's task: indistinguishable from a missing one
            raise TaskNotFound(f"task {task_id} is not one of your tasks")
        return row

    def task(self, labeler_id: int, task_id: int) -> Task:
        """One of this labeler's tasks (TaskNotFound if it is not theirs)."""
        con = self._con()
        _, order_json, status, prompt_id, prompt, comps = self._assignment(con, labeler_id, task_id)
        order, completions = json.loads(order_json), json.loads(comps)
        row = con.execute("SELECT ranking FROM answers WHERE assignment = ?", (task_id,)).fetchone()
        answer = None
        if row is not None:
            ranking = json.loads(row[0])
            answer = tuple("F" if ranking[i] is None else str(ranking[i]) for i in order)
        return Task(id=task_id, prompt_id=prompt_id, prompt=prompt,
                    completions=tuple(completions[i] for i in order), status=status, answer=answer)

    def submit(self, labeler_id: int, task_id: int, values: Sequence[str]) -> int:
        """Store (or replace) the answer to a task; ``values`` in display order. Returns the
        answer's revision (1 for the first submission). Committed when this returns."""
        with self._write() as con:
            prompt, order_json, status, *_ = self._assignment(con, labeler_id, task_id)
            order = json.loads(order_json)
            if status == "skipped":
                raise LabelError(f"task {task_id} was skipped and may have gone to someone else")
            if len(values) != len(order):
                raise LabelError(f"task {task_id}: {len(values)} ranks for {len(order)} completions")
            shown, _ = parse_ranking(values, where=f"task {task_id}")
            ranking: list[int | None] = [None] * len(order)
            for pos, i in enumerate(order):
                ranking[i] = shown[pos]
            flagged = [i for i, r in enumerate(ranking) if r is None]
            con.execute(
                "INSERT INTO answers (assignment, prompt, labeler, ranking, flagged, submitted_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (assignment) DO UPDATE SET "
                "ranking = excluded.ranking, flagged = excluded.flagged, "
                "submitted_at = excluded.submitted_at, revision = answers.revision + 1",
                (task_id, prompt, labeler_id, json.dumps(ranking), json.dumps(flagged),
                 time.time()))
            con.execute("UPDATE assignments SET status = 'done' WHERE id = ?", (task_id,))
            return con.execute("SELECT revision FROM answers WHERE assignment = ?",
                               (task_id,)).fetchone()[0]

    def skip(self, labeler_id: int, task_id: int) -> None:
        """Give an open task back (it goes to another labeler; this one will not see it again)."""
        with self._write() as con:
            status = self._assignment(con, labeler_id, task_id)[2]
            if status == "done":
                raise LabelError(f"task {task_id} is answered; resubmit it instead of skipping")
            con.execute("UPDATE assignments SET status = 'skipped' WHERE id = ?", (task_id,))

    # -- counts and answers ------------------------------------------------------------------
    def progress(self, labeler_id: int) -> dict:
        """This labeler's counts and answered tasks: ``done``, ``open``, ``skipped``,
        ``answered`` (list of (task id, prompt id, submitted_at))."""
        con = self._con()
        counts = dict(con.execute("SELECT status, COUNT(*) FROM assignments WHERE labeler = ? "
                                  "GROUP BY status", (labeler_id,)).fetchall())
        answered = con.execute(
            "SELECT a.id, p.prompt_id, s.submitted_at FROM answers s JOIN assignments a "
            "ON a.id = s.assignment JOIN prompts p ON p.id = a.prompt WHERE s.labeler = ? "
            "ORDER BY s.submitted_at DESC", (labeler_id,)).fetchall()
        return {k: counts.get(k, 0) for k in ("done", "open", "skipped")} | {"answered": answered}

    def totals(self) -> dict:
        """Prompt and answer counts over the whole database."""
        con = self._con()
        prompts = con.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
        per_prompt = con.execute("SELECT COUNT(*) FROM answers GROUP BY prompt").fetchall()
        return {"prompts": prompts, "answers": sum(n for (n,) in per_prompt),
                "prompts_labeled": len(per_prompt),
                "prompts_complete": sum(n >= self.labelers_per_prompt for (n,) in per_prompt),
                "labelers": con.execute("SELECT COUNT(*) FROM labelers").fetchone()[0]}

    def labeler_counts(self) -> list[dict]:
        """Per labeler: name, done, open, skipped, last submission time (None if none)."""
        rows = self._con().execute(
            "SELECT l.name, SUM(a.status = 'done'), SUM(a.status = 'open'), "
            "SUM(a.status = 'skipped'), (SELECT MAX(submitted_at) FROM answers s "
            " WHERE s.labeler = l.id) FROM labelers l LEFT JOIN assignments a ON a.labeler = l.id "
            "GROUP BY l.id ORDER BY l.name").fetchall()
        return [{"name": r[0], "done": r[1] or 0, "open": r[2] or 0, "skipped": r[3] or 0,
                 "last": r[4]} for r in rows]

    def labeled_prompts(self) -> Iterator[tuple[PromptItem, list[tuple[str, list, list]]]]:
        """Each prompt with at least one answer, and its ``(labeler, ranking, flagged)``
        answers (storage order), prompts in insertion order, labelers by name."""
        con = self._con()
        rows = con.execute(
            "SELECT p.id, p.prompt_id, p.prompt, p.completions, l.name, s.ranking, s.flagged "
            "FROM answers s JOIN prompts p ON p.id = s.prompt JOIN labelers l ON l.id = s.labeler "
            "ORDER BY p.id, l.name").fetchall()
        current, labels = None, []
        for pid, prompt_id, prompt, comps, name, ranking, flagged in rows:
            if current is not None and current[0] != pid:
                yield current[1], labels
                labels = []
            if current is None or current[0] != pid:
                item = PromptItem(prompt_id=prompt_id, prompt=prompt,
                                  completions=tuple(json.loads(comps)))
                current = (pid, item)
            labels.append((name, json.loads(ranking), json.loads(flagged)))
        if current is not None:
            yield current[1], labels
