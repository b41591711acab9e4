"""PPO with full fine-tuning (``policy_lora=None`` / ``critic_lora=None``) and with the sampler's
log-probs as the old log-probs: KL = 0 at step 0, the base untouched while full copies train, the
critic merged from the reward adapter, reward rises, bit-identical resume, mixed LoRA/full, a
one-device mesh, and the CLI's ppo/export of a fully fine-tuned policy."""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.config_args import config_from_args
from rlhf_jax.lora import Adapter, LoraConfig, init_lora, merge_lora, model_variables
from rlhf_jax.model import Transformer, init_head
from rlhf_jax.rollout import SamplingConfig, cached_sampler, decode_responses, left_pad
from rlhf_jax.scoring import RewardModel, critic_from_reward, reward_scores
from rlhf_jax.sharding import MeshConfig, make_mesh, shard_params
from rlhf_jax.train import (OptimConfig, PPOBatch, PPOConfig, RunConfig, make_optimizer, make_ppo,
                            make_ppo_experience, prepare_ppo, train_ppo)
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer


def TARGET(prompts, completions):
    return [c.split().count("w7") / 8 for c in completions]


LORA = LoraConfig(rank=4, alpha=8.0)
to_np = lambda tree: jax.tree_util.tree_map(np.array, tree)


def _config(steps, out=None, *, checkpoint_every=0, mesh=None, **kw):
    base = dict(batch_size=16, mini_batch_size=8, critic_init="zero", sampling=SamplingConfig(max_new_tokens=8),
                kl_coef=0.01, policy_lora=None, critic_lora=None, optim=OptimConfig(learning_rate=1e-3),
                run=RunConfig(max_steps=steps, out_dir=None if out is None else str(out), progress=False,
                              checkpoint_every=checkpoint_every, tensorboard=False, mesh=mesh))
    base.update(kw)
    return PPOConfig(**base)


def _reward_model(cfg):
    """A reward adapter (non-zero B, so merging it changes the kernels) and score head over the base."""
    rl = LoraConfig(rank=2, alpha=4.0)
    lora = jax.tree_util.tree_map(lambda x: x + 0.05, init_lora(Transformer(cfg, lora=rl), jax.random.PRNGKey(5)))
    return RewardModel(Adapter(lora, rl), init_head(jax.random.PRNGKey(6), cfg.hidden_size), gain=2.0, bias=0.5)


def _leaves_differ(a, b):
    return any(np.any(x != y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope="module")
def setup():
    cfg, tok = tiny_config(), tiny_tokenizer()
    return cfg, tok, tiny_base(cfg)


def test_full_policy_and_critic_train_copies_and_leave_the_base_untouched(setup):
    cfg, tok, base = setup
    before = to_np(base)
    init = to_np(make_ppo(cfg, make_optimizer(OptimConfig()), _config(1)).init(jax.random.PRNGKey(0), base).params)
    struct = jax.tree_util.tree_structure
    assert struct(init["policy"]) == struct(before) and struct(init["critic"]["model"]) == struct(before)
    assert set(init["critic"]) == {"model", "head"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, init["policy"], before)  # policy = reference
    jax.tree_util.tree_map(np.testing.assert_array_equal, init["critic"]["model"], before)
    np.testing.assert_array_equal(init["critic"]["head"]["kernel"], 0.0)
    res = train_ppo(cfg, base, tok, tiny_prompts(), TARGET, _config(24))
    # the same function on equal weights: log pi - log pi_ref is exactly 0 on every token
    assert res.history[0]["kl"] == 0.0 and res.history[-1]["kl"] > 0.0
    # the full copies trained; the base (never donated, never updated) is bit-identical
    final = to_np(res.state.params)
    assert _leaves_differ(final["policy"], before) and _leaves_differ(final["critic"]["model"], before)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, to_np(base))
    # the count-the-token task: the base emits w7 in roughly 1 token of 10-50, PPO raises it
    scores = [r["score"] for r in res.history]
    assert scores[0] < 0.25
    assert np.mean(scores[-4:]) > scores[0] + 0.15
    assert all(np.isfinite(r["kl"]) and np.isfinite(r["loss"]) for r in res.history)
    assert res.history[-1]["skipped"] == 0


def test_full_resume_is_bit_identical(setup, tmp_path):
    cfg, tok, base = setup
    run = lambda steps, out, every=0: train_ppo(cfg, base, tok, tiny_prompts(), TARGET,
                                                _config(steps, out, checkpoint_every=every))
    straight = run(8, tmp_path / "straight")
    run(4, tmp_path / "resumed", 4)
    resumed = run(8, tmp_path / "resumed", 4)
    assert [r["step"] for r in resumed.history] == list(range(8))
    for a, b in zip(straight.history, resumed.history):
        assert a == b
    jax.tree_util.tree_map(np.testing.assert_array_equal, to_np(tuple(straight.state)), to_np(tuple(resumed.state)))
    assert (tmp_path / "straight" / "ppo_curves.png").exists()


def test_full_critic_starts_from_the_merged_reward_adapter(setup):
    cfg, tok, base = setup
    before = to_np(base)
    rm = _reward_model(cfg)
    # a LoRA policy with a full critic (a mixed case; the CLI test below trains full + full from a
    # reward adapter), and the LoRA path's critic for comparison
    full = prepare_ppo(cfg, base, tok, tiny_prompts(32), rm, _config(1, critic_init="reward", policy_lora=LORA))
    crit = to_np(critic_from_reward(rm, base, full=True))
    lora_crit = to_np(critic_from_reward(rm))
    assert isinstance(full.state.params["critic"]["model"], dict)  # None stays full despite critic_init="reward"
    assert lora_crit["model"].config == rm.model.config
    merged = merge_lora(base, rm.model.tree, scale=rm.model.scale)
    q = lambda tree: tree["layers"]["attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(q(crit["model"]), np.asarray(q(merged)))
    assert np.any(q(crit["model"]) != q(before))  # the adapter really is in there
    jax.tree_util.tree_map(np.testing.assert_array_equal, crit["model"], to_np(merged))
    # the run's initial critic is exactly the merged one (OptimConfig refuses learning rate 0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, to_np(full.state.params["critic"]["model"]), crit["model"])
    # the head as on the LoRA path: the score head with the normalisation folded in
    jax.tree_util.tree_map(np.testing.assert_array_equal, crit["head"], lora_crit["head"])
    np.testing.assert_allclose(crit["head"]["bias"], 2.0 * np.asarray(rm.head["bias"]) + 0.5)
    # so the merged critic is the reward model: its value at the last token is the score (up to rounding)
    prompts = left_pad(tok(tiny_prompts(4))["input_ids"], pad_id=0)

    @jax.jit
    def last_value_and_score(critic, base, tokens, mask):
        hidden = Transformer(cfg).apply({"params": critic["model"]}, tokens, attention_mask=mask,
                                        return_hidden=True, compute_logits=False).hidden
        return hidden[:, -1] @ critic["head"]["kernel"] + critic["head"]["bias"], reward_scores(cfg, rm, base, tokens,
                                                                                                mask)

    value, score = last_value_and_score(crit, base, prompts.tokens, prompts.mask)
    np.testing.assert_allclose(value, score, atol=1e-4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, to_np(base))  # merged into a copy


def test_full_state_shards_by_path_on_a_one_device_mesh(setup):
    cfg, tok, base = setup
    mesh = MeshConfig(data=1)
    state = make_ppo(cfg, make_optimizer(OptimConfig()), _config(1)).init(jax.random.PRNGKey(0), base)
    state = shard_params(state, make_mesh(mesh))
    q = state.params["policy"]["layers"]["attn"]["q_proj"]["kernel"]
    assert tuple(q.sharding.spec) == (None, "fsdp", "tensor")  # the base's rule, found by path; [L, Din, Dout]
    mu = state.opt_state[1][0].mu["critic"]["model"]["layers"]["mlp"]["down_proj"]["kernel"]
    assert tuple(mu.sharding.spec) == (None, "tensor", "fsdp")
    # (a step on this mesh runs in the CLI test below: --mesh data=1)


def test_old_logprobs_from_the_sampler(setup, tmp_path):
    cfg, tok, base = setup
    # a full policy with a LoRA critic (the other mixed case); one minibatch, one epoch
    config = _config(3, tmp_path / "sampler", old_logprobs="sampler", critic_lora=LORA, batch_size=16,
                     mini_batch_size=16, ppo_epochs=1)
    state = make_ppo(cfg, make_optimizer(config.optim), config).init(jax.random.PRNGKey(0), base)
    sampling = dataclasses.replace(config.sampling, pad_id=0)
    prompts = left_pad(tok(tiny_prompts(16))["input_ids"], pad_id=0)
    ro = cached_sampler(cfg, None, sampling)(model_variables(base, state.params["policy"]), prompts.tokens,
                                              prompts.mask, jax.random.PRNGKey(3))
    texts = decode_responses(tok, ro.response_tokens, ro.response_mask, skip_special_tokens=True)
    batch = PPOBatch(ro, jnp.asarray(TARGET(None, texts), jnp.float32))
    rmask = np.asarray(ro.response_mask) > 0

    def experience(run=lambda fn, *args: jax.jit(fn)(*args), **changes):  # on the same state and rollout
        return run(make_ppo_experience(cfg, dataclasses.replace(config, **changes)), state, base, batch)

    exp_r, m_r, _ = experience(old_logprobs="recompute")
    exp_s, m_s, _ = experience()
    old_r, old_s = np.asarray(exp_r.old_logp), np.asarray(exp_s.old_logp)
    assert old_s.dtype == np.float32 and rmask.sum() > 16
    np.testing.assert_allclose(old_s[rmask], old_r[rmask], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(old_s[~rmask], 0.0)
    np.testing.assert_allclose(np.asarray(exp_s.advantages)[rmask], np.asarray(exp_r.advantages)[rmask], atol=1e-3)
    assert "entropy" in m_r and "entropy" not in m_s  # no policy forward, so no logits to take it from
    assert "entropy" in experience(jax.eval_shape, kl_estimator="full")[1]  # the exact KL needs the logits

    res = train_ppo(cfg, base, tok, tiny_prompts(), TARGET, config)
    first = res.history[0]  # one minibatch: the ratio is new/old on the same weights, ~1
    assert first["clip_frac"] == 0.0 and first["approx_kl"] < 1e-6 and abs(first["ratio_max"] - 1.0) < 1e-3
    assert abs(first["kl"]) < 1e-4  # sampler vs recomputed reference log-probs: rounding only
    assert all("entropy" not in r for r in res.history)
    assert _leaves_differ(to_np(res.state.params["policy"]), to_np(base))
    assert (tmp_path / "sampler" / "ppo_curves.png").exists()  # plotting skips the absent key
    rows = [json.loads(line) for line in open(tmp_path / "sampler" / "metrics.jsonl")]
    assert len(rows) == 3 and "entropy" not in rows[0]


def test_old_logprobs_is_validated():
    with pytest.raises(ValueError, match="old_logprobs"):
        PPOConfig(old_logprobs="cached")


def test_cli_ppo_and_export_of_a_fully_finetuned_policy(tmp_path, capsys):
    from safetensors.numpy import load_file

    from rlhf_jax.cli import main
    from rlhf_jax.export import ExportError, save_hf_folder
    from rlhf_jax.model import load_pretrained
    from rlhf_jax.scoring import save_reward_model

    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg)
    model, rm_dir, prompts = tmp_path / "sft", tmp_path / "rm", tmp_path / "prompts.jsonl"
    save_hf_folder(str(model), cfg, base, tokenizer=tok)
    save_reward_model(str(rm_dir), _reward_model(cfg))
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in tiny_prompts(16)))
    out = tmp_path / "ppo"
    assert main(["ppo", "--model", str(model), "--reward", str(rm_dir), "--prompts", str(prompts), "--out", str(out),
                 "--policy_lora.off", "--critic_lora.off", "--run.max_steps", "1", "--batch_size", "8",
                 "--mini_batch_size", "8", "--ppo_epochs", "1", "--optim.learning_rate", "1e-2",
                 "--sampling.max_new_tokens", "4", "--run.progress", "false", "--run.tensorboard", "false",
                 "--run.checkpoint_every", "1", "--mesh", "data=1"]) == 0
    assert "PEFT adapter skipped" in capsys.readouterr().out
    saved = json.load(open(out / "config.json"))
    assert saved["policy_lora"] is None and saved["critic_lora"] is None
    assert (out / "policy" / "model.safetensors").exists() and not (out / "policy_adapter").exists()
    policy = load_file(str(out / "policy" / "model.safetensors"))
    reference = load_file(str(model / "model.safetensors"))
    assert set(policy) == set(reference) and any(np.any(policy[k] != reference[k]) for k in policy)
    _, params, _ = load_pretrained(str(out / "policy"))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(base)

    # `export` from the orbax checkpoint: the full policy as is, no adapter to merge or write
    assert main(["export", "--model", str(model), "--run", str(out), "--stage", "ppo",
                 "--out", str(tmp_path / "hf")]) == 0
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(exported) == set(policy)
    for k in policy:
        np.testing.assert_array_equal(exported[k], policy[k])
    assert main(["export", "--model", str(model), "--run", str(out), "--stage", "ppo", "--format", "peft",
                 "--out", str(tmp_path / "peft")]) == 2  # one line: a full policy has no adapter
    assert "no adapter" in capsys.readouterr().err
    # --config JSON with nulls gives the same config
    (tmp_path / "c.json").write_text(json.dumps({"policy_lora": None, "critic_lora": None}))
    cfg_json = config_from_args(PPOConfig, argparse.Namespace(), config_file=str(tmp_path / "c.json"))
    assert cfg_json.policy_lora is None and cfg_json.critic_lora is None
