"""The library's step functions on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices give the
one-device numbers: SFT (full fine-tuning, gradient accumulation, bfloat16 base), the reward
model (GPT-2), PPO and greedy generation (Llama). Each script runs in its own process with
``--xla_force_host_platform_device_count=8`` (see tests/sharding_scripts/)."""

import numpy as np
import pytest

from tests.sharding_scripts.runner import run_json, run_json_once

TOL = 1e-5


def assert_sharded(info, spec, shard_shape, devices=8):
    """``info`` (from the script's ``shard_info``) has ``spec`` and every device holds ``shard_shape``."""
    assert info["spec"] == spec, info
    assert info["shard_shapes"] == [list(shard_shape)], info
    assert info["devices"] == devices


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    return run_json_once("sft_mesh.py", tmp_path_factory, devices=8)


def test_sft_full_finetuning_matches_one_device_and_shards_every_weight(sft):
    assert sft["devices"] == 8 and sft["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    full = sft["full"]
    np.testing.assert_allclose(full["loss_mesh"], full["loss_single"], atol=TOL, rtol=0)
    assert full["param_diff"][1] <= TOL, full["param_diff"]
    assert full["opt_diff"][1] <= 1e-6, full["opt_diff"]  # Adam's moments: the gradients agree
    assert full["changed"] > 50 * TOL  # the two steps did move the weights
    # D = 32, N*H = 32, F = 64, V = 24, L = 2 stacked layers (unsharded): column-parallel
    # [L, D/fsdp, NH/tensor], row-parallel [L, NH/tensor, D/fsdp]
    assert_sharded(full["q_proj"], [None, "fsdp", "tensor"], (2, 16, 16))
    assert_sharded(full["o_proj"], [None, "tensor", "fsdp"], (2, 16, 16))
    assert_sharded(full["down_proj"], [None, "tensor", "fsdp"], (2, 32, 16))
    assert_sharded(full["embed"], ["tensor", "fsdp"], (12, 16))
    assert_sharded(full["norm"], [], (32,))
    assert_sharded(full["adam_mu_q_proj"], [None, "fsdp", "tensor"], (2, 16, 16))  # optimizer state follows
    assert_sharded(sft["batch_tokens"], [["data", "fsdp"]], (2, 12))  # 8 rows over data x fsdp = 4


def test_gradient_accumulation_equals_one_big_batch(sft):
    acc = sft["accum"]
    # 2 micro-steps of 4 rows (each with 5 loss tokens per row) == 1 step of 8 rows
    assert acc["unchanged_after_first_micro_step"] == 0.0
    assert abs(acc["loss_micro_mean"] - acc["loss_big"]) <= TOL
    assert acc["param_diff"][1] <= TOL, acc["param_diff"]
    assert acc["changed"] > 50 * TOL
    assert_sharded(acc["acc_grads_q_proj"], [None, "fsdp", "tensor"], (2, 16, 16))


def test_bfloat16_base_float32_adapter_and_logits(sft):
    bf = sft["bf16"]
    assert bf["logits_dtype"] == "float32"
    assert bf["base_dtypes"] == ["bfloat16"]
    assert bf["adapter_dtypes"] == ["float32"] and bf["adam_dtypes"] == ["float32"]
    assert_sharded(bf["base_q_proj"], [None, "fsdp", "tensor"], (2, 16, 16))
    assert_sharded(bf["lora_a"], [None, "fsdp", None], (2, 16, 4))
    assert_sharded(bf["lora_b"], [None, None, "tensor"], (2, 4, 16))
    assert all(np.isfinite(bf["losses"])) and bf["losses"][1] < bf["losses"][0]
    # B = 0 at step 0: the bf16 model's loss is the f32 base's up to bfloat16 rounding
    assert abs(bf["losses"][0] - bf["loss_f32"]) < 1e-2 * bf["loss_f32"]
    assert bf["changed"] > 50 * TOL


def test_reward_step_gpt2_matches_one_device(tmp_path):
    rw = run_json("reward_mesh.py", tmp_path / "reward.json", devices=8)
    np.testing.assert_allclose(rw["loss_mesh"], rw["loss_single"], atol=TOL, rtol=0)
    assert rw["loss_single"][-1] < rw["loss_single"][0]
    assert rw["param_diff"][1] <= TOL, rw["param_diff"]
    assert rw["grad_mu_diff"][1] <= 1e-6, rw["grad_mu_diff"]
    assert_sharded(rw["c_attn"], [None, "fsdp", "tensor"], (2, 16, 48))  # fused qkv [D, 3D]
    assert_sharded(rw["c_attn_bias"], [None, "tensor"], (2, 48))
    assert_sharded(rw["attn_c_proj"], [None, "tensor", "fsdp"], (2, 16, 16))
    assert_sharded(rw["c_fc"], [None, "fsdp", "tensor"], (2, 16, 32))
    assert_sharded(rw["mlp_c_proj"], [None, "tensor", "fsdp"], (2, 32, 16))
    assert_sharded(rw["pos_embed"], [None, "fsdp"], (32, 16))
    assert_sharded(rw["lora_c_attn_a"], [None, "fsdp", None], (2, 16, 4))  # a [Din, R]: Din like the kernel
    assert_sharded(rw["lora_c_attn_b"], [None, None, "tensor"], (2, 4, 48))  # b [R, Dout]: Dout like the kernel
    assert_sharded(rw["lora_mlp_c_proj_a"], [None, "tensor", None], (2, 32, 4))
    assert_sharded(rw["head_kernel"], [], (32,))  # score head replicated
    assert_sharded(rw["batch_ids"], [["data", "fsdp"]], (2, 2, 10))


@pytest.fixture(scope="module")
def ppo(tmp_path_factory):
    return run_json_once("ppo_mesh.py", tmp_path_factory, devices=8)


def test_greedy_generation_same_tokens_on_mesh(ppo):
    gen = ppo["generate"]
    np.testing.assert_array_equal(gen["tokens_mesh"], gen["tokens_single"])
    assert gen["logprob_diff"] <= TOL
    assert_sharded(gen["prompt_sharding"], [["data", "fsdp"]], (2, 6))
    assert np.array(gen["tokens_single"]).shape == (8, 12)


def test_ppo_step_matches_one_device(ppo):
    res = ppo["ppo"]
    single, mesh = res["metrics_single"], res["metrics_mesh"]
    for k in single:
        assert abs(single[k] - mesh[k]) <= TOL * max(1.0, abs(single[k])), (k, single[k], mesh[k])
    assert res["param_diff"][1] <= TOL, res["param_diff"]
    assert res["grad_mu_diff"][1] <= 1e-6, res["grad_mu_diff"]
    assert res["changed"][1] > 50 * TOL
    assert_sharded(res["policy_q_b"], [None, None, "tensor"], (2, 4, 16))
    assert_sharded(res["critic_down_a"], [None, "tensor", None], (2, 32, 4))
    assert_sharded(res["value_head"], [], (32,))
    assert_sharded(res["base_gate"], [None, "fsdp", "tensor"], (2, 16, 32))
    assert_sharded(res["lm_head"], ["fsdp", "tensor"], (16, 12))
