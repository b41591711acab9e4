"""Run a sharding script in a fresh Python process: XLA reads the number of host devices once, when
JAX initialises its CPU backend, so the 8-device (or multi-process) checks cannot share the pytest
process."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent.parent


def script_env(devices: int | None) -> dict:
    """The environment of a script: CPU only, ``devices`` host devices. LLVM optimisation is
    turned down (``--xla_backend_optimization_level=0``) to halve compile time; the one-device
    reference and the sharded run are compiled alike."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    flags.append("--xla_backend_optimization_level=0")
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def start(script: str, *args: str, devices: int | None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), *args], cwd=str(ROOT), env=script_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for ``proc`` (killed after ``timeout`` seconds); raise with its output if it failed."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"{proc.args[1]} timed out after {timeout} s:\n{output[-4000:]}")
    if proc.returncode != 0:
        raise AssertionError(f"{proc.args[1]} exited with {proc.returncode}:\n{output[-4000:]}")
    return output


def run_json(script: str, out: Path, *, devices: int, timeout: float = 400) -> dict:
    """Run ``script OUT`` on ``devices`` host devices and return the JSON it wrote."""
    finish(start(script, str(out), devices=devices), timeout)
    return json.loads(out.read_text())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the coordinator binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_json_once(script: str, tmp_path_factory, *, devices: int, timeout: float = 400) -> dict:
    """:func:`run_json` for a module-scoped fixture: under pytest-xdist the workers share one run
    (the first to take the lock runs the script, the others read its JSON)."""
    name = Path(script).stem
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return run_json(script, tmp_path_factory.mktemp(name) / f"{name}.json", devices=devices, timeout=timeout)
    root = tmp_path_factory.getbasetemp().parent  # this session's directory, shared by its workers
    out = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return json.loads(out.read_text())
        return run_json(script, out, devices=devices, timeout=timeout)
