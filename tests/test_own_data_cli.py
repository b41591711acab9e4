"""Every stage through the command line on a user's own chat model and data: a tiny Qwen2 folder made
with `transformers` (byte-level BPE trained with `tokenizers`, a ChatML template in the folder), and
every TRL dataset format from JSONL, JSON lists, Parquet and ``save_to_disk`` folders.

What is proved, each against an independent computation:
- SFT puts the loss on exactly the tokens each format says (counted from the texts by hand: the
  completion + EOS, the assistant turns with ``<|im_end|>\\n``), a conversation and its
  prompt-completion form train identically, and packed rows give the unpadded loss;
- the reward model's first loss equals Bradley-Terry computed here on sequences rendered by the
  tokenizer's own ``apply_chat_template``, and explicit and implicit prompts train identically;
- PPO and evaluation read prompts from every prompt-bearing format, reward functions get the
  original prompts, and sampling stops at ``<|im_end|>`` (checked in completions);
- exports load in `transformers`/`peft` with the chat template and a generation config that
  samples as we did; bad input fails with one line naming the file, row and fix.
"""

import json
import os
import shutil

import numpy as np
import pytest

from rlhf_jax.cli import main
from tests.chat_fixtures import EXAMPLES
from tests.own_data_fixtures import chat_model_folder, classifier_folder, metrics, write_examples, write_reward_module

torch = pytest.importorskip("torch")

TOPICS = [("sky", "blue", "green"), ("grass", "green", "purple"), ("sun", "yellow", "blue")]
QUIET = ["--run.progress", "false", "--run.tensorboard", "false"]
SFT = [*QUIET, "--run.max_steps", "1", "--batch_size", "3", "--max_length", "64", "--eval_fraction", "0",
       "--pad_multiple", "0", "--lora.rank", "2", "--run.checkpoint_every", "1"]
REWARD = [*QUIET, "--run.max_steps", "1", "--batch_size", "3", "--max_length", "48", "--eval_fraction", "0",
          "--pad_multiple", "0", "--lora.rank", "2", "--run.checkpoint_every", "1", "--normalize-samples", "0"]
PPO = [*QUIET, "--run.max_steps", "1", "--batch_size", "3", "--mini_batch_size", "3", "--ppo_epochs", "1",
       "--sampling.max_new_tokens", "8", "--critic_init", "zero", "--policy_lora.rank", "2", "--critic_lora.rank", "2",
       "--run.checkpoint_every", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("own_data")
    model = chat_model_folder(root / "model")
    return {"root": root, "model": model, "data": write_examples(root), "tok": AutoTokenizer.from_pretrained(model),
            "classifier": classifier_folder(model, root / "classifier"), "rewards": write_reward_module(root)}


def _split(path):
    return ["--split", "train"] if os.path.isdir(path) else []


def _cli(capsys, *argv) -> str:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    return out.out


def _count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_sft_every_format_and_source_and_packing(world, capsys):
    tok, data, root = world["tok"], world["data"], world["root"]
    turn = sum(_count(tok, f"It is {c}.<|im_end|>\n") for _, c, _ in TOPICS)  # an assistant turn, as ChatML writes it
    expected = {  # loss tokens of the 3 rows (nothing predicts a row's first token; EOS appended to strings)
        "standard_language_modeling": sum(_count(tok, f"The {t} is {c}.") for t, c, _ in TOPICS),
        "conversational_language_modeling": turn,
        "standard_prompt_completion": sum(_count(tok, f" {c}.") + 1 for _, c, _ in TOPICS),
        "conversational_prompt_completion": turn,
    }
    first = {}
    for name, tokens in expected.items():
        out = _cli(capsys, "sft", "--model", world["model"], "--data", data[name], *_split(data[name]),
                   "--out", root / f"sft_{name}", *SFT)
        assert f"{name}: 3 rows, 3 kept, 0 truncated" in out
        row = metrics(root / f"sft_{name}")[0]
        assert row["tokens"] == tokens, name
        first[name] = row["loss"]
    # a conversation and its prompt-completion form are the same tokens and the same loss mask
    assert first["conversational_language_modeling"] == pytest.approx(first["conversational_prompt_completion"],
                                                                     rel=1e-6)
    out = _cli(capsys, "sft", "--model", world["model"], "--data", data["conversational_language_modeling"],
               "--out", root / "sft_packed", *SFT, "--packing", "true", "--max_length", "128", "--batch_size", "1")
    assert "packed 3 examples into 1 rows of 128 tokens" in out
    row = metrics(root / "sft_packed")[0]
    assert row["tokens"] == turn
    assert row["loss"] == pytest.approx(first["conversational_language_modeling"], rel=1e-5)  # packed == unpacked
    template = open(os.path.join(root, "sft_conversational_language_modeling", "model", "chat_template.jinja")).read()
    assert template == tok.chat_template  # the template travels with the trained model


def _bradley_terry_first_loss(world, run_dir, rows):
    """The first step's loss computed here: the run's initial reward model (same config and seed)
    on sequences rendered with the tokenizer's own apply_chat_template."""
    import jax

    from rlhf_jax.config_args import build_config
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.train import RewardConfig, make_optimizer, make_reward, reward_loss

    tok = world["tok"]
    cfg = build_config(RewardConfig, json.load(open(os.path.join(run_dir, "config.json"))))
    mc, base, _ = load_pretrained(world["model"], tokenizer=False)
    state = make_reward(mc, make_optimizer(cfg.optim), cfg).init(jax.random.PRNGKey(cfg.run.seed), base)
    ids = np.zeros((len(rows), 2, cfg.max_length), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        for j, side in enumerate(("chosen", "rejected")):
            seq = tok(tok.apply_chat_template(r["prompt"] + r[side], tokenize=False), add_special_tokens=False)
            n = len(seq["input_ids"])
            ids[i, j, -n:], mask[i, j, -n:] = seq["input_ids"], 1
    loss, _ = reward_loss(mc, cfg, state.params._replace(gain=1.0, bias=0.0), base,
                          {"input_ids": ids, "attention_mask": mask, "margin": np.zeros(len(rows), np.float32)})
    return float(loss)


def test_reward_every_preference_format_and_export(world, capsys):
    from transformers import AutoModelForSequenceClassification

    data, root = world["data"], world["root"]
    first = {}
    for name in ("standard_preference", "standard_implicit_preference", "conversational_preference",
                 "conversational_implicit_preference"):
        out = _cli(capsys, "reward", "--model", world["model"], "--pairs", data[name], *_split(data[name]),
                   "--out", root / f"rm_{name}", *REWARD)
        assert f"{name}: 3 rows, 3 kept" in out
        first[name] = metrics(root / f"rm_{name}")[0]["loss"]
    # the implicit prompt is split off exactly: the same pairs, the same loss
    assert first["standard_implicit_preference"] == pytest.approx(first["standard_preference"], rel=1e-6)
    assert first["conversational_implicit_preference"] == pytest.approx(first["conversational_preference"], rel=1e-6)
    hand = _bradley_terry_first_loss(world, root / "rm_conversational_preference",
                                     EXAMPLES["conversational_preference"])
    assert first["conversational_preference"] == pytest.approx(hand, rel=1e-5)

    # normalised on the model's own samples (conversational prompts rendered, stopping at <|im_end|>)
    run = root / "rm_norm"
    _cli(capsys, "reward", "--model", world["model"], "--pairs", data["conversational_preference"], "--out", run,
         *REWARD, "--normalize-samples", "3", "--max-new-tokens", "6")
    meta = json.load(open(run / "reward_model" / "reward_config.json"))
    assert meta["gain"] != 1.0 and meta["bias"] != 0.0

    # export as a sequence classifier and as a PEFT SEQ_CLS adapter: transformers and peft score as we do
    from peft import PeftModel

    from rlhf_jax.model import load_pretrained
    from rlhf_jax.scoring import load_reward_model, reward_scores

    _cli(capsys, "export", "--model", world["model"], "--run", run, "--stage", "reward", "--out", root / "rm_hf")
    _cli(capsys, "export", "--model", world["model"], "--run", run, "--stage", "reward", "--format", "peft",
         "--out", root / "rm_peft")
    tok = world["tok"]
    texts = [tok.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False) for r in EXAMPLES[
        "conversational_preference"]]
    enc = tok(texts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="np")
    mc, base, _ = load_pretrained(world["model"], tokenizer=False)
    ours = np.asarray(reward_scores(mc, load_reward_model(str(run / "reward_model")), base, enc["input_ids"],
                                    enc["attention_mask"]))
    hf = AutoModelForSequenceClassification.from_pretrained(root / "rm_hf").float().eval()
    torch.manual_seed(0)
    peft_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        world["model"], num_labels=1).float(), root / "rm_peft").eval()
    peft_bias = json.load(open(root / "rm_peft" / "reward_head.json"))["score_bias"]
    with torch.no_grad():
        ids, am = torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"])
        np.testing.assert_allclose(hf(input_ids=ids, attention_mask=am).logits.numpy()[:, 0] + hf.config.score_bias,
                                   ours, atol=1e-4)
        np.testing.assert_allclose(peft_model(input_ids=ids, attention_mask=am).logits.numpy()[:, 0] + peft_bias,
                                   ours, atol=1e-4)
    assert np.std(ours) > 1e-3


@pytest.mark.slow
def test_ppo_evaluate_and_export_from_every_prompt_format(world, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    data, root, tok = world["data"], world["root"], world["tok"]
    monkeypatch.chdir(root)  # --reward_fn rewards:... imports rewards.py from the working directory
    end = tok.convert_tokens_to_ids("<|im_end|>")
    runs = {  # (prompts, extra flags): a Hugging Face classifier, Python functions, a reward folder
        "conversational_prompt_only": ["--reward", world["classifier"]],
        "conversational_preference": ["--format", "prompt_only", "--reward_fn", "rewards:brevity",
                                      "--reward_fn", "rewards:record:0"],
        "standard_prompt_completion": ["--reward_fn", "rewards:brevity"],
    }
    for name, extra in runs.items():
        out = _cli(capsys, "ppo", "--model", world["model"], "--prompts", data[name], *_split(data[name]),
                   "--out", root / f"ppo_{name}", *PPO, *extra)
        stops = [0, end] if name.startswith("conversational") else [0]
        assert f"stop tokens {stops}" in out, out
        assert np.isfinite(metrics(root / f"ppo_{name}")[0]["score"])
    calls = [json.loads(line) for line in open(root / "calls.jsonl")]
    assert all(p in [r["prompt"] for r in EXAMPLES["conversational_preference"]] for p in calls[0]["prompts"])
    assert all("<|im_end|>" not in c for c in calls[0]["completions"])  # texts without special tokens

    # evaluation on conversational prompt-completion data: completions stop at the end of turn
    run = root / "ppo_conversational_prompt_only"
    _cli(capsys, "evaluate", "--model", world["model"], "--policy", f"ppo={run}/policy", "--reward",
         world["classifier"], "--prompts", data["conversational_prompt_completion"], "--split", "train",
         "--out", root / "eval", "--samples", "2", "--max-new-tokens", "8")
    report = json.load(open(root / "eval" / "eval.json"))
    texts = [c for m in report["samples"].values() for prompt in m["completions"] for c in prompt]
    assert any("<|im_end|>" in t for t in texts)
    assert all(t.endswith("<|im_end|>") for t in texts if "<|im_end|>" in t)
    assert all(p.endswith("<|im_start|>assistant\n") for p in report["prompts"])  # rendered with the template

    # exports: the template travels with the tokenizer, generation_config samples as the run did
    _cli(capsys, "export", "--model", world["model"], "--run", run, "--stage", "ppo", "--out", root / "ppo_hf")
    _cli(capsys, "export", "--model", world["model"], "--run", run, "--stage", "ppo", "--format", "peft",
         "--out", root / "ppo_peft")
    gen = GenerationConfig.from_pretrained(root / "ppo_hf")
    assert (gen.do_sample, gen.top_k, gen.top_p, gen.temperature, gen.max_new_tokens) == (True, 0, 1.0, 1.0, 8)
    assert gen.eos_token_id == [0, end]
    for folder in ("ppo_hf", "ppo_peft"):
        exported = AutoTokenizer.from_pretrained(root / folder)
        chat = EXAMPLES["conversational_prompt_only"][0]["prompt"]
        assert exported.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
            tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert os.path.isfile(root / "ppo_peft" / "adapter_model.safetensors")
    AutoModelForCausalLM.from_pretrained(root / "ppo_hf")
    sft_run = root / "sft_for_export"
    _cli(capsys, "sft", "--model", world["model"], "--data", data["conversational_language_modeling"], "--out", sft_run,
         *SFT)
    _cli(capsys, "export", "--model", world["model"], "--run", sft_run, "--stage", "sft", "--out", root / "sft_hf")
    gen = GenerationConfig.from_pretrained(root / "sft_hf")  # nothing was sampled: pure sampling, EOS + end of turn
    assert (gen.do_sample, gen.top_k, gen.eos_token_id) == (True, 0, [0, end])


def test_bad_input_is_one_line_naming_file_row_and_fix(world, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": " b"}) + "\n" + json.dumps({"question": "a?"}) + "\n")
    out = tmp_path / "out"

    def fails(*argv) -> str:
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    err = fails("sft", "--model", world["model"], "--data", bad, "--out", out, *SFT)
    assert f"{bad}:2" in err and "fits no dataset format" in err and "prompt-completion {prompt, completion}" in err
    err = fails("ppo", "--model", world["model"], "--prompts", world["data"]["standard_prompt_only"], "--out", out,
                *PPO)
    assert "--reward FOLDER" in err  # no reward given

    plain = tmp_path / "no_template"  # the same model, its tokenizer saved without a chat template
    shutil.copytree(world["model"], plain)
    os.remove(plain / "chat_template.jinja")
    conv = world["data"]["conversational_language_modeling"]
    err = fails("sft", "--model", plain, "--data", conv, "--out", out, *SFT)
    assert "no chat template" in err and "--chat_template FILE.jinja" in err
    template = tmp_path / "chatml.jinja"
    template.write_text(world["tok"].chat_template)
    _cli(capsys, "sft", "--model", plain, "--data", conv, "--chat_template", template, "--out", out, *SFT)
    assert open(out / "model" / "chat_template.jinja").read() == template.read_text()  # saved with the model

    no_tok = tmp_path / "no_tokenizer"
    os.makedirs(no_tok)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(world["model"], f), no_tok / f)
    err = fails("sft", "--model", no_tok, "--data", conv, "--out", out, *SFT)
    assert "no tokenizer files" in err and "tokenizer.json" in err


def test_ranked_feedback_with_message_list_prompts(world, capsys, tmp_path):
    """Ranked feedback records whose prompt is a conversation: `feedback to-pairs` gives TRL's
    conversational preference rows, which the reward command trains on (Bradley-Terry on the
    template's rendering, computed here), and PPO/evaluate read the records as prompts."""
    from rlhf_jax.data import encode_prompt_data

    labels = [{"labeler": f"l{j}", "ranking": [1, 2, 3], "flagged": []} for j in range(3)]
    records = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"What color is the {t}?"}],
                "completions": [f"It is {good}.", f"It is {bad}.", "No idea."], "criterion": "helpfulness",
                "instructions_id": "v1", "labels": labels} for i, (t, good, bad) in enumerate(TOPICS)]
    ranked = tmp_path / "ranked_chat.jsonl"
    ranked.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs = tmp_path / "pairs.jsonl"
    _cli(capsys, "feedback", "to-pairs", ranked, "--out", pairs)
    rows = [json.loads(line) for line in open(pairs)]
    assert len(rows) == 9 and rows[0]["prompt"] == records[0]["prompt"]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "It is blue."}]
    out = _cli(capsys, "reward", "--model", world["model"], "--pairs", pairs, "--out", tmp_path / "rm", *REWARD)
    assert "conversational_preference: 9 rows, 9 kept" in out
    # the first step's batch: the run's seeded order of the 9 pairs (none held out), then its rows
    from rlhf_jax.train.batching import batch_indices

    seed = json.load(open(tmp_path / "rm" / "config.json"))["run"]["seed"]
    drawn = np.random.default_rng(seed).permutation(9)[batch_indices(0, 9, 3, seed)]
    plain = [{k: rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in drawn]
    assert metrics(tmp_path / "rm")[0]["loss"] == pytest.approx(
        _bradley_terry_first_loss(world, tmp_path / "rm", plain), rel=1e-5)
    prompts, report = encode_prompt_data(str(ranked), world["tok"])  # what ppo/evaluate --prompts read
    assert report.format == "conversational_prompt_only"
    assert prompts.texts == [world["tok"].apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                             for r in records]
