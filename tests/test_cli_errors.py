"""Routine mistakes on the command line end in one line ``error: ...`` and exit status 2 (a run that
cannot make progress: status 1), never a traceback; nothing is written that should not be."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax.cli import main
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from rlhf_jax.export import save_hf_folder

    root = tmp_path_factory.mktemp("cli")
    cfg = tiny_config()
    save_hf_folder(str(root / "model"), cfg, tiny_base(cfg), tokenizer=tiny_tokenizer())
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": " w15"}) + "\n"
                                            for p in tiny_prompts(32)))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in tiny_prompts(32)))
    (root / "empty.jsonl").write_text("")
    return root


def _error(capsys, argv, status=2):
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_reward_folder(files, tmp_path, capsys):
    line = _error(capsys, ["ppo", "--model", str(files / "model"), "--reward", str(tmp_path / "nope"),
                           "--prompts", str(files / "prompts.jsonl"), "--out", str(tmp_path / "out")])
    assert "nope" in line and "reward_config.json" in line


def test_bad_values_are_refused_before_anything_runs(files, tmp_path, capsys):
    base = ["sft", "--model", str(files / "model"), "--data", str(files / "sft.jsonl"), "--out", str(tmp_path / "o")]
    assert "SFTConfig.batch_size must be >= 1, got 0" in _error(capsys, base + ["--batch_size", "0"])
    assert "RunConfig.max_steps must be >= 1, got 0" in _error(capsys, base + ["--run.max_steps", "0"])
    assert "ture" in _error(capsys, base + ["--run.tensorboard", "ture"])
    assert "learning_rate must be > 0" in _error(capsys, base + ["--optim.learning_rate=-1e-3"])
    assert "max_length 64 is beyond the model's context of 32 tokens" in _error(capsys, base + ["--max_length", "64"])
    (tmp_path / "c.json").write_text(json.dumps({"optim": {"learnig_rate": 1e-3}}))
    assert "learning_rate" in _error(capsys, base + ["--config", str(tmp_path / "c.json")])
    assert not (tmp_path / "o" / "model").exists()  # nothing written for a refused run


def test_empty_prompts_file_and_no_room_for_a_prompt(files, tmp_path, capsys):
    from rlhf_jax.scoring import save_reward_model
    from tests.test_train_ppo_full import _reward_model

    save_reward_model(str(tmp_path / "rm"), _reward_model(tiny_config()))
    ppo = ["ppo", "--model", str(files / "model"), "--reward", str(tmp_path / "rm"), "--out", str(tmp_path / "o")]
    assert "empty.jsonl" in _error(capsys, ppo + ["--prompts", str(files / "empty.jsonl")])
    line = _error(capsys, ppo + ["--prompts", str(files / "prompts.jsonl"), "--sampling.max_new_tokens", "32"])
    assert "max_new_tokens 32 leaves no room for a prompt in the model's context of 32 tokens" in line


def test_nonfinite_weights_exit_1_and_export_nothing(files, tmp_path, capsys):
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "nan_model"
    shutil.copytree(files / "model", bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    line = _error(capsys, ["sft", "--model", str(bad), "--data", str(files / "sft.jsonl"), "--out",
                           str(tmp_path / "o"), "--run.max_steps", "2", "--batch_size", "8", "--max_length", "16",
                           "--run.progress", "false"], status=1)
    assert "non-finite" in line
    assert not (tmp_path / "o" / "model").exists()


def test_changed_config_refuses_to_resume_from_the_cli(files, tmp_path, capsys):
    run = ["sft", "--model", str(files / "model"), "--data", str(files / "sft.jsonl"), "--out", str(tmp_path / "o"),
           "--batch_size", "8", "--max_length", "16", "--run.progress", "false", "--run.checkpoint_every", "1",
           "--lora.rank", "2"]
    assert main(run + ["--run.max_steps", "1"]) == 0
    line = _error(capsys, run + ["--run.max_steps", "2", "--optim.learning_rate", "5e-4", "--run.seed", "3"])
    assert "optim.learning_rate: 0.001 -> 0.0005" in line and "run.seed: 0 -> 3" in line
    assert main(run + ["--run.max_steps", "2"]) == 0  # only longer: a resume


def test_export_checks_the_model_against_the_recorded_base(files, tmp_path, capsys):
    from rlhf_jax.export import save_hf_folder

    run = ["sft", "--model", str(files / "model"), "--data", str(files / "sft.jsonl"), "--out", str(tmp_path / "o"),
           "--batch_size", "8", "--max_length", "16", "--run.progress", "false", "--run.max_steps", "1",
           "--run.checkpoint_every", "1", "--lora.rank", "2"]
    assert main(run) == 0
    cfg = tiny_config()
    save_hf_folder(str(tmp_path / "other"), cfg, tiny_base(cfg, seed=7), tokenizer=tiny_tokenizer())
    export = ["export", "--run", str(tmp_path / "o"), "--stage", "sft", "--out", str(tmp_path / "x")]
    line = _error(capsys, export + ["--model", str(tmp_path / "other")])
    assert "is not the base model the run" in line and "other" in line
    assert not (tmp_path / "x").exists()
    assert main(export + ["--model", str(files / "model")]) == 0 and (tmp_path / "x" / "config.json").is_file()


def test_debug_shows_the_traceback_and_no_flag_hides_it(files, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    args = ["ppo", "--model", str(files / "model"), "--reward", str(tmp_path / "nope"), "--prompts",
            str(files / "prompts.jsonl"), "--out", str(tmp_path / "o")]
    quiet = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", *args], env=env, capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "--debug", *args], env=env, capture_output=True,
                          text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr
