"""``rlhf-jax grpo``: a Python reward function from a file and the exact-match verifier of an
answer field, weighted, on a tiny Hugging Face folder; the run writes its config, metrics (each
reward part), the generation config and the policy (merged folder + PEFT adapter). Conversational
prompts go through the chat template. Mistakes are one ``error:`` line."""

from __future__ import annotations

import json

from rlhf_jax.cli import main
from rlhf_jax.export import save_hf_folder
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer

REWARD = '''
def count_w7(prompts, completions):
    return [c.split().count("w7") / 8 for c in completions]
'''


def _files(tmp_path, field="prompt"):
    cfg = tiny_config()
    save_hf_folder(str(tmp_path / "base"), cfg, tiny_base(cfg), tokenizer=tiny_tokenizer())
    with open(tmp_path / "prompts.jsonl", "w") as f:
        for p in tiny_prompts(8):
            f.write(json.dumps({field: p, "answer": "w7"}) + "\n")
    (tmp_path / "reward.py").write_text(REWARD)
    return ["--model", str(tmp_path / "base"), "--prompts", str(tmp_path / "prompts.jsonl"),
            "--reward-fn", f"{tmp_path / 'reward.py'}:count_w7:1", "--answer-field", "answer"]


def test_grpo_command_trains_and_saves(tmp_path, capsys):
    common = _files(tmp_path, field="question")  # the prompts in another field: --prompt-field
    out = tmp_path / "run"
    rc = main(["grpo", *common, "--prompt-field", "question", "--out", str(out), "--answer-weight", "0.5",
               "--batch_size", "2", "--group_size", "2", "--sampling.max_new_tokens", "4", "--policy_lora.rank", "2",
               "--run.max_steps", "2", "--run.progress", "false", "--loss_type", "dr_grpo"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "grpo: stopped at max_steps after 2 steps" in text
    saved = json.loads((out / "config.json").read_text())
    assert saved["group_size"] == 2 and saved["loss_type"] == "dr_grpo" and saved["scale_rewards"] == "group"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"reward/count_w7", "reward/exact_match", "kl", "zero_std_frac"} <= set(rows[0])
    assert (out / "policy" / "config.json").exists() and (out / "policy_adapter" / "adapter_config.json").exists()
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 4


def test_mistakes_are_one_line(tmp_path, capsys):
    common = _files(tmp_path)
    rc = main(["rloo", *common[:4], "--out", str(tmp_path / "r"), "--reward-fn", f"{common[5].rsplit(':', 1)[0]}:x"])
    assert rc == 2 and "must be a weight (a number)" in capsys.readouterr().err
    rc = main(["rloo", *common[:-2], "--out", str(tmp_path / "r"), "--answer-field", "no_such_field"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "no field 'no_such_field' (--answer-field no_such_field)" in err
    rc = main(["reinforce-pp", "--model", common[1], "--prompts", common[3], "--out", str(tmp_path / "r"),
               "--reward-fn", "no_such_module_xyz:f"])
    assert rc == 2 and "cannot import no_such_module_xyz" in capsys.readouterr().err
    rc = main(["grpo", "--model", common[1], "--prompts", common[3], "--out", str(tmp_path / "r")])
    assert rc == 2 and "no reward" in capsys.readouterr().err
    rc = main(["grpo", *common, "--out", str(tmp_path / "r"), "--group_size", "1"])
    assert rc == 2 and "GRPOConfig.group_size must be at least 2" in capsys.readouterr().err
