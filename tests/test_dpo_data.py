"""DPO data: every preference format (explicit / implicit, standard / conversational with the chat
template, JSONL / Parquet / save_to_disk) -> the prompt-once arrays; EOS, truncation and skipping
are counted; the CLI command."""

import json

import numpy as np
import pytest

from rlhf_jax.data import DataConfig
from rlhf_jax.train import DPOConfig, encode_dpo_data
from rlhf_jax.train.dpo import layout_pairs
from tests.chat_fixtures import EXAMPLES, chat_tokenizer, dataset_path


def _real(arrays, i):
    """(prompt, chosen, rejected) real token ids of pair i."""
    p = arrays["prompt_ids"][i][arrays["prompt_mask"][i] > 0].tolist()
    c, r = ([int(t) for t, m in zip(arrays["completion_ids"][i, j], arrays["completion_mask"][i, j]) if m]
            for j in (0, 1))
    return p, c, r


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


@pytest.mark.parametrize("style", ["standard", "conversational"])
def test_explicit_and_implicit_pairs_give_the_same_arrays(tok, style):
    explicit, report = encode_dpo_data(tok, EXAMPLES[f"{style}_preference"], DPOConfig())
    implicit, _ = encode_dpo_data(tok, EXAMPLES[f"{style}_implicit_preference"], DPOConfig())
    for k in explicit:
        np.testing.assert_array_equal(explicit[k], implicit[k], err_msg=k)
    assert report.kept == 3 and report.truncated == 0 and report.n_skipped == 0
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    p, c, r = _real(explicit, 0)
    if style == "standard":  # the tokenizer's EOS appended to each completion, as TRL does
        assert (p, c, r) == (ids("The sky is"), ids(" blue.") + [tok.eos_token_id], ids(" green.") + [tok.eos_token_id])
    else:  # the template's rendering: the prompt with the generation prompt, the assistant turn with <|im_end|>
        whole = tok.apply_chat_template([{"role": "user", "content": "What color is the sky?"},
                                         {"role": "assistant", "content": "It is blue."}], tokenize=False)
        assert p + c == ids(whole) and tok.decode(c).startswith("It is blue.<|im_end|>")
        assert tok.eos_token_id not in c[:-1] and tok.decode(r).startswith("It is green.<|im_end|>")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "disk"])
def test_files_of_every_source_kind(tok, tmp_path, kind):
    path = dataset_path(tmp_path, "conversational_preference", kind)
    arrays, report = encode_dpo_data(tok, path, DPOConfig())
    reference, _ = encode_dpo_data(tok, EXAMPLES["conversational_preference"], DPOConfig())
    assert report.source.endswith(path.rsplit("/", 1)[-1]) or kind == "disk"
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], reference[k], err_msg=k)


def test_truncation_eos_and_empty_prompts_are_counted():
    pairs = [{"prompt_ids": [1, 5, 6, 7, 8], "chosen_ids": [9, 10, 11, 12], "rejected_ids": [13, 2]},
             {"prompt_ids": [], "chosen_ids": [9], "rejected_ids": [10]},
             {"prompt_ids": [5], "chosen_ids": [9], "rejected_ids": []}]
    arrays, counts = layout_pairs(pairs, pad_id=0, bos_id=1, eos_id=2, max_prompt_length=3, max_completion_length=3)
    assert counts == {"kept": (0, 2), "truncated": 1, "skipped": {"empty_prompt": 1}}
    # prompt: BOS kept + its last 2 tokens; chosen: EOS appended then cut to its first 3; rejected
    # already ends with EOS; an empty completion becomes [EOS]
    assert _real(arrays, 0) == ([1, 7, 8], [9, 10, 11], [13, 2])
    assert _real(arrays, 1) == ([5], [9, 2], [2])
    assert arrays["prompt_ids"].shape == (2, 3) and arrays["completion_ids"].shape == (2, 2, 3)


def test_forced_format_and_bad_rows_name_the_row(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(EXAMPLES["standard_preference"][0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(Exception, match=r"bad.jsonl:2"):
        encode_dpo_data(tok, str(path), DPOConfig())
    with pytest.raises(Exception, match="preference"):
        encode_dpo_data(tok, EXAMPLES["standard_prompt_only"], DPOConfig(), data_config=DataConfig())


def test_cli_dpo_trains_and_saves_the_policy(tmp_path, capsys):
    """``rlhf-jax dpo --model FOLDER --data FILE --out DIR``: config flags, config.json, the policy
    as a merged Hugging Face folder and a PEFT adapter; a bad flag value is one line, exit 2."""
    from rlhf_jax.cli import main
    from rlhf_jax.export import save_hf_folder
    from rlhf_jax.model import load_pretrained
    from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer

    cfg = tiny_config()
    model = tmp_path / "base"
    save_hf_folder(str(model), cfg, tiny_base(cfg), tokenizer=tiny_tokenizer())
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i % 5}", "chosen": " w9 w14", "rejected": " w9 w15"}) + "\n"
                            for i in range(12)))
    out = tmp_path / "dpo"
    flags = ["--max_prompt_length", "8", "--max_completion_length", "8", "--batch_size", "4", "--lora.rank", "2",
             "--run.max_steps", "2", "--run.progress", "false", "--run.tensorboard", "false"]
    assert main(["dpo", "--model", str(model), "--data", str(data), "--out", str(out), "--loss", "ipo",
                 "--beta", "0.5", "--reference", "cached", *flags]) == 0
    text = capsys.readouterr().out
    assert "dpo (ipo, reference cached): 2 steps" in text and "eval_accuracy" in text
    saved = json.load(open(out / "config.json"))
    assert saved["loss"] == "ipo" and saved["lora"]["rank"] == 2 and saved["reference"] == "cached"
    assert (out / "policy_adapter" / "adapter_config.json").exists()
    mc, _, _ = load_pretrained(str(out / "policy"))
    assert mc.vocab_size == cfg.vocab_size
    # routine mistakes: one line "error: ...", exit 2, nothing written (as test_cli_errors.py for the other stages)
    refused = tmp_path / "x"
    for extra, words in ((["--pairs", str(data), "--label_smoothing", "0.7"], "label_smoothing"),
                         (["--data", str(data), "--max_prompt_length", "30"],
                          "max_prompt_length 30 + max_completion_length 256 = 286 is beyond the model's context of 32"),
                         (["--data", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file"),
                         ([], "--data FILE")):
        capsys.readouterr()
        assert main(["dpo", "--model", str(model), "--out", str(refused), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not refused.exists()
