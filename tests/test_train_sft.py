"""SFT trainer: completion-only loss, LoRA merged into the new base, exact resume, metrics files."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.lora import LoraConfig
from rlhf_jax.model import Transformer
from rlhf_jax.train import OptimConfig, RunConfig, SFTConfig, encode_sft, lm_loss, train_sft
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer

PROMPTS = [f"w{i % 5} w{(i + 1) % 5}" for i in range(40)]
COMPLETIONS = [f"w{10 + i % 5} w{10 + (i + 2) % 5} w15" for i in range(40)]
ROWS = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)]


def test_loss_mask_covers_completion_and_eos_only():
    tok = tiny_tokenizer()
    data, report = encode_sft(tok, ["w1 w2"], ["w3"], max_length=6)
    # left padded: [pad, pad, w1, w2, w3, </s>]; the loss mask marks w3 and </s>
    np.testing.assert_array_equal(data.input_ids[0], [0, 0, 5, 6, 7, 2])
    np.testing.assert_array_equal(data.loss_mask[0], [0, 0, 0, 0, 1, 1])
    assert report.skipped == 0
    # hand-made logits: 10 for w3 and </s>, 0 for the 18 other words, at every position, so
    # p(w3) = p(</s>) = e^10 / (2 e^10 + 18) and the loss is log(2 + 18 e^-10) ~= log 2
    logits = jnp.zeros((1, 6, 20)).at[..., 7].set(10.0).at[..., 2].set(10.0)
    loss, _ = lm_loss(logits, jnp.asarray(data.input_ids), jnp.asarray(data.loss_mask))
    np.testing.assert_allclose(float(loss), np.log(2.0 + 18.0 * np.exp(-10.0)), rtol=1e-5)


def test_too_long_completion_is_skipped_and_counted():
    tok = tiny_tokenizer()
    _, report = encode_sft(tok, ["w1"], ["w1 w2 w3 w4 w5 w6 w7"], max_length=5)
    assert report.skipped == 1 and report.kept == 0


def test_lora_sft_learns_merges_and_resumes_exactly(tmp_path):
    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg)
    base_copy = jax.tree_util.tree_map(np.array, base)
    sft = lambda out, steps, **kw: train_sft(cfg, base, tok, ROWS, SFTConfig(
        lora=LoraConfig(rank=4, alpha=8.0), batch_size=8, max_length=10, eval_fraction=0.2,
        optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(max_steps=steps, out_dir=str(out), progress=False, **kw)))
    full = sft(tmp_path / "full", 8)
    assert full.history[-1]["loss"] < 0.7 * full.history[0]["loss"]
    assert np.isfinite(full.eval["eval_perplexity"])
    # the base given in is untouched; the merged base reproduces base + adapter
    jax.tree_util.tree_map(np.testing.assert_array_equal, base_copy, jax.tree_util.tree_map(np.array, base))
    tokens = jnp.asarray(encode_sft(tok, PROMPTS[:4], COMPLETIONS[:4], max_length=10)[0].input_ids)
    adapted = Transformer(cfg, lora=full.lora.config).apply({"params": base, "lora": full.lora.tree}, tokens).logits
    merged = Transformer(cfg).apply({"params": full.params}, tokens).logits
    assert np.max(np.abs(np.asarray(adapted) - np.asarray(merged))) < 1e-4

    # 4 steps, stop (checkpoint at 4), resume to 8: bit-identical adapter and metrics
    sft(tmp_path / "resumed", 4, checkpoint_every=4)
    resumed = sft(tmp_path / "resumed", 8, checkpoint_every=4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.array, full.lora.tree),
                           jax.tree_util.tree_map(np.array, resumed.lora.tree))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(8))
    assert os.path.exists(tmp_path / "full" / "sft_curves.png")
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "full" / "tensorboard"))


def test_full_finetuning_trains_a_copy(tmp_path):
    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg, head_scale=1.0)
    before = jax.tree_util.tree_map(np.array, base)
    ok = train_sft(cfg, base, tok, ROWS, SFTConfig(
        batch_size=8, max_length=10, optim=OptimConfig(learning_rate=1e-2), run=RunConfig(max_steps=3, progress=False)))
    assert ok.lora is None and ok.history[-1]["loss"] < ok.history[0]["loss"]
    assert jax.tree_util.tree_structure(ok.params) == jax.tree_util.tree_structure(base)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, base))


def test_eval_every_logs_heldout_loss_during_the_run():
    cfg, tok = tiny_config(), tiny_tokenizer()
    res = train_sft(cfg, tiny_base(cfg), tok, ROWS, SFTConfig(
        lora=LoraConfig(rank=2), batch_size=8, max_length=10, eval_fraction=0.2, eval_every=2,
        run=RunConfig(max_steps=4, progress=False)))
    assert [("eval_loss" in r) for r in res.history] == [False, True, False, True]
    # the last row's eval comes from the final evaluation (same weights as the step-4 one)
    assert res.history[-1]["eval_loss"] == res.eval["eval_loss"]


def test_trim_padding_cuts_shared_padding_to_a_multiple():
    from rlhf_jax.train.batching import trim_padding

    mask = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]])
    ids = np.arange(16).reshape(2, 8)
    out = trim_padding({"input_ids": ids, "attention_mask": mask, "margin": np.array([0.5, 1.0])}, multiple=2)
    np.testing.assert_array_equal(out["attention_mask"], mask[:, 4:])  # longest 4 -> width 4
    np.testing.assert_array_equal(out["input_ids"], ids[:, 4:])
    np.testing.assert_array_equal(out["margin"], [0.5, 1.0])  # not sequence-shaped: untouched
    assert trim_padding({"input_ids": ids, "attention_mask": mask}, multiple=3)["input_ids"].shape == (2, 6)
    assert trim_padding({"input_ids": ids, "attention_mask": mask}, multiple=16)["input_ids"].shape == (2, 8)
    right = mask[:, ::-1]  # right padding keeps the first columns
    np.testing.assert_array_equal(trim_padding({"attention_mask": right}, multiple=2)["attention_mask"], right[:, :4])
    assert trim_padding({"attention_mask": mask}, multiple=0)["attention_mask"].shape == (2, 8)
    three = np.zeros((2, 2, 8), int)  # reward batches [B, K, T]
    three[..., 6:] = 1
    assert trim_padding({"attention_mask": three}, multiple=4)["attention_mask"].shape == (2, 2, 4)


def test_trimmed_batches_give_the_same_loss_as_full_width():
    from rlhf_jax.train.sft import rows

    cfg, tok = tiny_config(), tiny_tokenizer()
    params = tiny_base(cfg)
    data, _ = encode_sft(tok, ["w1 w2", "w3"], ["w4 w5", "w6"], max_length=24)
    model = Transformer(cfg)
    losses = []
    for mult in (0, 4):
        b = rows(data, np.arange(2), mult)
        logits = model.apply({"params": params}, b.input_ids, attention_mask=b.attention_mask).logits
        losses.append(float(lm_loss(logits, b.input_ids, b.loss_mask)[0]))
        assert b.input_ids.shape[1] == (24 if mult == 0 else 8)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
