"""Every ``python`` and ``bash`` block of README.md runs as printed, each on its own, in a fresh
folder (a block may not use names another block defined).

A block may be preceded by one HTML comment that the harness reads:

- ``<!-- readme-test: setup=NAME[,NAME] -->``: files the block says it needs are made first
  (``demo_export``: the folder ``make demo`` exports, here a tiny random model with a tokenizer;
  ``cli_files``: ``base_hf/`` and the JSONL files the command-line example names; ``chat_model``:
  a local Qwen2 chat folder and the data files of the own-model-and-data run);
- ``<!-- readme-test: devices=8 -->``: run with 8 CPU devices (``XLA_FLAGS``);
- ``<!-- readme-test: skip: REASON -->``: not run here (a server that blocks, 8 accelerators); the
  reason must name the test file that covers it instead, which is checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)


def _all_blocks():
    text = (ROOT / "README.md").read_text()
    for m in BLOCK.finditer(text):
        line = text[: m.start("code")].count("\n") + 1
        yield line, m.group("lang"), m.group("code"), m.group("mark") or ""


def _blocks():
    return [pytest.param(lang, code, mark, id=f"README.md:{line}")
            for line, lang, code, mark in _all_blocks() if not mark.startswith("skip:")]


def test_blocks_not_run_here_name_the_test_that_covers_them():
    for line, _, _, mark in _all_blocks():
        if mark.startswith("skip:"):
            named = re.findall(r"tests/test_\w+\.py", mark)
            assert named and all((ROOT / n).exists() for n in named), f"README.md:{line}: {mark}"


def _demo_export(root: Path) -> None:
    from rlhf_jax.export import save_hf_folder
    from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer

    cfg = tiny_config().replace(max_position_embeddings=48)  # the demo's context
    save_hf_folder(str(root / "runs/demo/export/ppo_policy"), cfg, tiny_base(cfg), tokenizer=tiny_tokenizer())


def _cli_files(root: Path) -> None:
    from rlhf_jax.export import save_hf_folder
    from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer

    cfg = tiny_config().replace(max_position_embeddings=128)  # room for the commands' default lengths
    save_hf_folder(str(root / "base_hf"), cfg, tiny_base(cfg), tokenizer=tiny_tokenizer())
    prompts = tiny_prompts(48)
    with open(root / "sft.jsonl", "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, "completion": f" w{10 + i % 5} w15"}) + "\n")
    with open(root / "ranked.jsonl", "w") as f:
        for i, p in enumerate(prompts[:32]):
            labels = [{"labeler": f"l{j}", "ranking": [1, 2, 3] if (i + j) % 5 else [2, 1, 3], "flagged": []}
                      for j in range(3)]
            f.write(json.dumps({"prompt_id": f"p{i}", "prompt": p, "completions": [" w15 w15", " w7", " w3 w3 w3"],
                                "criterion": "helpfulness", "instructions_id": "rlhf-jax-default-v1",
                                "labels": labels}) + "\n")
    for name, rows in (("prompts.jsonl", prompts), ("heldout.jsonl", tiny_prompts(64)[48:])):
        with open(root / name, "w") as f:
            f.writelines(json.dumps({"prompt": p}) + "\n" for p in rows)


def _chat_model(root: Path) -> None:
    """A local chat model and the data files of the "your own model and data" command-line run: a
    tiny Qwen2 folder (BPE tokenizer, ChatML template), multi-turn chats, conversational
    preferences, a save_to_disk prompt set, held-out prompt-completion chats, a Python reward and a
    Qwen2ForSequenceClassification made by transformers on the model's body."""
    import datasets

    from tests.chat_fixtures import write_dataset
    from tests.own_data_fixtures import chat_model_folder, classifier_folder

    model = chat_model_folder(root / "chat_model")
    classifier_folder(model, root / "classifier")
    things = [("sky", "blue", "green"), ("grass", "green", "purple"), ("sun", "yellow", "blue"),
              ("sea", "blue", "red"), ("snow", "white", "black"), ("night", "dark", "bright"), ("fire", "red", "blue"),
              ("sand", "yellow", "green"), ("milk", "white", "green"), ("coal", "black", "white"),
              ("leaf", "green", "pink"), ("rose", "red", "grey")]
    user = lambda t: {"role": "user", "content": f"What color is the {t}?"}
    says = lambda c: {"role": "assistant", "content": f"It is {c}."}
    chats = [{"messages": [{"role": "system", "content": "You are a terse assistant."}, user(t), says(c),
                           {"role": "user", "content": "Are you sure?"}, says(c)]} for t, c, _ in things]
    write_dataset(chats, root / "chats.jsonl")
    write_dataset([{"prompt": [user(t)], "chosen": [says(c)], "rejected": [says(r)]} for t, c, r in things],
                  root / "prefs.parquet", "parquet")
    prompts = [{"prompt": [user(t)]} for t, _, _ in things]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(prompts[:8]),
                          "test": datasets.Dataset.from_list(prompts[8:])}).save_to_disk(str(root / "prompts"))
    write_dataset([{"prompt": [user(t)], "completion": [says(c)]} for t, c, _ in things[8:]], root / "heldout.json",
                  "json")
    (root / "my_rewards.py").write_text("def brevity(prompts, completions):\n"
                                        "    return [-len(c) / 20 for c in completions]\n")


SETUPS = {"demo_export": _demo_export, "cli_files": _cli_files, "chat_model": _chat_model}


@pytest.mark.slow
@pytest.mark.parametrize("lang, code, mark", _blocks())
def test_readme_block_runs_as_printed(lang, code, mark, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for item in mark.split():
        key, _, value = item.partition("=")
        if key == "setup":
            for name in value.split(","):
                SETUPS[name](tmp_path)
        elif key == "devices":
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(value)}"
        else:
            raise AssertionError(f"unknown readme-test mark {item!r}")
    if lang == "python":
        (tmp_path / "block.py").write_text(code)
        cmd = [sys.executable, "block.py"]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{lang} block failed:\n{code}\n--- output ---\n{(proc.stdout + proc.stderr)[-4000:]}"
