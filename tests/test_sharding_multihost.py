"""Several hosts: two processes on this machine (``jax.distributed.initialize`` over 127.0.0.1, gloo
CPU collectives, 2 devices each) train the reward model on a global (data=1, fsdp=2, tensor=2)
mesh, fed alternately the whole global batch (each process keeps its rows) and only each
process's rows; losses and final parameters equal a one-process, one-device run."""

import json

import numpy as np

from tests.sharding_scripts.runner import finish, free_port, start

TIMEOUT = 300


def test_two_processes_match_one_process(tmp_path):
    port = str(free_port())
    multi = [start("multihost_reward.py", str(tmp_path / "multi"), "multi", str(i), port, devices=2) for i in range(2)]
    single = start("multihost_reward.py", str(tmp_path / "single"), "single", devices=1)
    try:
        for proc in multi + [single]:
            finish(proc, TIMEOUT)
    finally:
        for proc in multi + [single]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ref = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"multi.{i}.json").read_text()) for i in range(2)]
    assert ref["process_count"] == 1
    for i, r in enumerate(ranks):
        assert r["process_count"] == 2 and r["process_id"] == i
        assert r["local_devices"] == 2 and r["global_devices"] == 4
        # fsdp spans the processes, tensor stays inside each: process i holds rows 4i..4i+3
        assert r["mesh_device_processes"] == [[0, 0], [1, 1]]
        assert r["rows"] == [4 * i, 4 * i + 4]
        # a q_proj kernel [L, 32, 32] is split over fsdp x tensor: this process holds two L x 16 x 16 blocks
        q = r["q_proj"]
        assert q["spec"] == [None, "fsdp", "tensor"] and q["shard_shapes"] == [[2, 16, 16]]
        assert q["devices"] == 4 and not q["fully_addressable"]
        np.testing.assert_allclose(r["losses"], ref["losses"], atol=1e-5, rtol=0)
    assert ref["losses"][-1] != ref["losses"][0]
    got, want = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(got.files) == sorted(want.files) and "model/tree/layers/attn/q_proj/b" in want.files
    for name in want.files:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0, err_msg=name)
    assert max(np.max(np.abs(want[n])) for n in want.files if n.endswith("/b")) > 1e-4  # B moved from 0
