"""The trainers with ``RunConfig(mesh=...)`` on 8 CPU devices give the one-device losses and
parameters (in a subprocess: the device count is fixed when JAX starts)."""

import numpy as np
import pytest

from tests.sharding_scripts.runner import run_json_once

TOL = 1e-5


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_json_once("trainers_mesh.py", tmp_path_factory, devices=8)


@pytest.mark.parametrize("name", ["sft_lora", "sft_full", "reward"])
def test_sft_and_reward_trainers_on_a_mesh_match_one_device(result, name):
    assert result["devices"] == 8
    single, mesh = result[name]["loss"]
    np.testing.assert_allclose(mesh, single, atol=TOL, rtol=0)
    assert result[name]["param_diff"] <= TOL


def test_full_finetuning_parameters_are_sharded(result):
    assert result["sft_full"]["q_spec"] == ["None", "fsdp", "tensor"]  # [L, Din, Dout]


def test_ppo_trainer_on_a_mesh_matches_one_device(result):
    ppo = result["ppo"]
    for key in ("score", "kl", "loss", "value_loss"):
        np.testing.assert_allclose(ppo[key][1], ppo[key][0], atol=TOL, rtol=0)
    assert ppo["param_diff"] <= TOL
    assert ppo["b_spec"] == ["None", "None", "tensor"]
