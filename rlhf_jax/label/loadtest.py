"""Drive a running labeling server over HTTP as labelers do, for load and fault tests.

`LabelerClient` is one labeler's browser without the browser: HTTP/1.1 keep-alive
(`http.client`), the session cookie, the CSRF token read from each task page. `run_load` runs
many of them at once in threads; `check_answers` compares what the server acknowledged with
what the database holds. `serve` starts ``python -m rlhf_jax.label.cli serve`` as a real
subprocess on a free port.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from rlhf_jax.label.ranking import parse_ranking
from rlhf_jax.label.store import LabelStore

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_RANK = re.compile(r'name="rank_(\d+)"')


class ServerGone(ConnectionError):
    """The server closed the connection or could not be reached."""


class LabelerClient:
    """One labeler's session with the server at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0):
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.token, self.cookie, self.conn = token, "", None
        self.labeler_id = int(token.split(".")[0])

    def _request(self, method: str, path: str, body: str | None = None):
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read().decode("utf-8")
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ServerGone(f"{method} {path}: {type(e).__name__}: {e}") from e
        for k, v in resp.getheaders():
            if k.lower() == "set-cookie" and v.startswith("rlhf_label_session="):
                self.cookie = v.split(";")[0]
        return resp.status, resp.getheader("location", ""), data

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def login(self) -> None:
        """Open the login link (sets the session cookie)."""
        status, location, _ = self._request("GET", f"/login/{self.token}")
        if status != 303 or not self.cookie:
            raise RuntimeError(f"login refused: HTTP {status}")

    def next_task(self) -> int | None:
        """The next task id, or None when nothing is left for this labeler."""
        status, location, _ = self._request("GET", "/task")
        if status == 303 and location.startswith("/task/"):
            return int(location.split("/")[2].split("?")[0])
        if status == 200:
            return None
        raise RuntimeError(f"GET /task: HTTP {status}")

    def open_task(self, task_id: int) -> tuple[str, int]:
        """Load a task page: ``(csrf token, number of completions)``."""
        status, _, html = self._request("GET", f"/task/{task_id}")
        if status != 200:
            raise RuntimeError(f"GET /task/{task_id}: HTTP {status}")
        return _CSRF.search(html).group(1), len(set(_RANK.findall(html)))

    def submit(self, task_id: int, values: Sequence[str], csrf: str) -> float:
        """Post an answer (display order); returns the seconds until it was acknowledged."""
        form = {f"rank_{i}": v for i, v in enumerate(values)} | {"csrf": csrf, "action": "submit"}
        start = time.perf_counter()
        status, location, _ = self._request("POST", f"/task/{task_id}",
                                            urllib.parse.urlencode(form))
        took = time.perf_counter() - start
        if status != 303 or location != f"/task?saved={task_id}":
            raise RuntimeError(f"POST /task/{task_id}: HTTP {status} -> {location!r}")
        return took


def random_answer(rng: random.Random, k: int) -> list[str]:
    """A ranking a labeler might give: a permutation, sometimes with a tie or an F."""
    ranks = [str(r) for r in rng.sample(range(1, k + 1), k)]
    if k >= 3 and rng.random() < 0.3:
        ranks[rng.randrange(k)] = "F"
    if k >= 3 and rng.random() < 0.2:
        i, j = rng.sample(range(k), 2)
        if "F" not in (ranks[i], ranks[j]):
            ranks[j] = ranks[i]
    return ranks


@dataclass
class LoadResult:
    """What the clients sent and what the server acknowledged."""

    acknowledged: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    """(labeler id, task id) -> the last acknowledged answer (display order)."""

    latencies: list[float] = field(default_factory=list)
    """Seconds per acknowledged submission (POST to acknowledgement)."""

    submissions: int = 0
    """Acknowledged submissions, resubmissions included."""

    errors: list[str] = field(default_factory=list)
    """One line per client that stopped early (e.g. the server was killed)."""

    def percentile(self, q: float) -> float:
        """The q-quantile (0..1) of the latencies, nearest rank."""
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))] if xs else float("nan")


def run_load(base_url: str, tokens: Sequence[str], *, tasks_each: int, resubmit_every: int = 0,
             seed: int = 0, stop: threading.Event | None = None,
             into: LoadResult | None = None) -> LoadResult:
    """Each token's labeler, in its own thread, answers ``tasks_each`` tasks (and, with
    ``resubmit_every`` = n, answers every n-th of them again with a new ranking).

    A client that loses the server stops and records why in ``errors``; ``stop`` ends all;
    ``into``: fill this result (another thread may watch it grow) instead of a new one.
    """
    result, lock = (into if into is not None else LoadResult()), threading.Lock()

    def labeler(n: int, token: str) -> None:
        rng = random.Random(seed * 1000 + n)
        client = LabelerClient(base_url, token)
        try:
            client.login()
            done: list[tuple[int, int]] = []
            for _ in range(tasks_each):
                if stop is not None and stop.is_set():
                    return
                task_id = client.next_task()
                if task_id is None:
                    break
                csrf, k = client.open_task(task_id)
                done.append((task_id, k))
                _send(client, task_id, random_answer(rng, k), csrf)
            for task_id, k in done[resubmit_every - 1::resubmit_every] if resubmit_every else []:
                csrf, _ = client.open_task(task_id)
                _send(client, task_id, random_answer(rng, k), csrf)
        except (ServerGone, RuntimeError) as e:
            with lock:
                result.errors.append(f"labeler {client.labeler_id}: {e}")
        finally:
            client.close()

    def _send(client: LabelerClient, task_id: int, values: list[str], csrf: str) -> None:
        took = client.submit(task_id, values, csrf)
        with lock:
            result.acknowledged[(client.labeler_id, task_id)] = values
            result.latencies.append(took)
            result.submissions += 1

    threads = [threading.Thread(target=labeler, args=(n, t), daemon=True)
               for n, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def check_answers(db_path: str, acknowledged: dict[tuple[int, int], list[str]]) -> dict:
    """Compare acknowledged answers with the database: ``stored`` (answer rows),
    ``duplicated`` (extra rows for one labeler and prompt), ``lost`` (acknowledged answers
    missing or different from the stored one; the list ``lost_tasks``)."""
    store = LabelStore(db_path)
    con = sqlite3.connect(db_path)
    try:
        stored = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        duplicated = con.execute("SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM "
                                 "answers GROUP BY prompt, labeler)").fetchone()[0]
    finally:
        con.close()
    lost = []
    for (labeler_id, task_id), values in acknowledged.items():
        expected = tuple("F" if r is None else str(r) for r in parse_ranking(values)[0])
        if store.task(labeler_id, task_id).answer != expected:
            lost.append(task_id)
    store.close()
    return {"stored": stored, "duplicated": duplicated, "lost": len(lost), "lost_tasks": lost}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server subprocess."""

    url: str
    """``http://127.0.0.1:PORT``."""

    process: subprocess.Popen
    """The ``python -m rlhf_jax.label.cli serve`` process."""

    def kill9(self) -> None:
        """SIGKILL the server (no shutdown code runs) and reap it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def serve(db_path: str, *, port: int | None = None, ready_timeout: float = 60.0) -> Iterator[Server]:
    """Run the server on 127.0.0.1 in a subprocess until the block ends (then terminate it)."""
    port = port or free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_jax.label.cli", "serve", db_path,
                             "--port", str(port)], env=env, stdout=log, stderr=log)
    server = Server(url=f"http://127.0.0.1:{port}", process=proc)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited with {proc.returncode}: "
                                   f"{log.read().decode()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server on port {port} not ready after {ready_timeout} s")
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
