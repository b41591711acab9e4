"""The one loop: SFT, reward and PPO steps run by the same ``fit`` (one (init, step) shape), and
its run policies: non-finite weights or rewards stop the run, corrupt checkpoints are detected
and the previous one is used, a changed setup refuses to resume, a cut metrics line is dropped."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import LoraConfig, model_variables
from rlhf_jax.rollout import SamplingConfig, cached_sampler, left_pad
from rlhf_jax.train import (CheckpointError, FitContext, NonFiniteError, OptimConfig, PPOBatch, PPOConfig,
                            RewardConfig, RunConfig, SFTBatch, SFTConfig, encode_sft, fit, make_optimizer, make_ppo,
                            make_reward, make_sft, train_sft)
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer

PROMPTS = [f"w{i % 5} w{(i + 1) % 5}" for i in range(40)]
COMPLETIONS = [f"w{10 + i % 5} w{10 + (i + 2) % 5} w15" for i in range(40)]
SFT_ROWS = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)]
to_np = lambda tree: jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def tiny():
    cfg, tok = tiny_config(), tiny_tokenizer()
    return cfg, tok, tiny_base(cfg)


def test_sft_reward_and_ppo_run_through_one_loop(tiny):
    """Every algorithm is ``init(key, base) -> state`` and ``step(state, base, batch)``: the same
    loop, with only the batches differing, runs all three."""
    cfg, tok, base = tiny
    before = to_np(base)
    lora = LoraConfig(rank=2, alpha=4.0)
    sft_data, _ = encode_sft(tok, PROMPTS[:8], COMPLETIONS[:8], max_length=10)
    pair_ids = np.stack([sft_data.input_ids[:4], sft_data.input_ids[4:8]], axis=1)  # [4, 2, T]
    pair_mask = np.stack([sft_data.attention_mask[:4], sft_data.attention_mask[4:8]], axis=1)
    pairs = {"input_ids": pair_ids, "attention_mask": pair_mask, "margin": np.zeros(4, np.float32)}
    ppo_config = PPOConfig(batch_size=8, mini_batch_size=4, critic_init="zero", policy_lora=lora, critic_lora=lora,
                           sampling=SamplingConfig(max_new_tokens=4, pad_id=0))
    prompts = left_pad(tok(tiny_prompts(8))["input_ids"], pad_id=0)
    sampler = cached_sampler(cfg, lora, ppo_config.sampling)

    def ppo_batch(step, ctx: FitContext):
        ro = sampler(model_variables(ctx.base, ctx.state.params["policy"]), prompts.tokens, prompts.mask,
                     jax.random.PRNGKey(step))
        return PPOBatch(ro, ro.lengths.astype(jnp.float32) / 4)

    runs = {
        "sft": (make_sft(cfg, make_optimizer(OptimConfig(learning_rate=1e-2)), SFTConfig(lora=lora)),
                lambda step, ctx: SFTBatch(*(jnp.asarray(x) for x in sft_data[:3]))),
        "reward": (make_reward(cfg, make_optimizer(OptimConfig(learning_rate=1e-2)), RewardConfig(lora=lora)),
                   lambda step, ctx: {k: jnp.asarray(v) for k, v in pairs.items()}),
        "ppo": (make_ppo(cfg, make_optimizer(OptimConfig(learning_rate=1e-2)), ppo_config), ppo_batch),
    }
    for name, (algo, batch_fn) in runs.items():
        state = algo.init(jax.random.PRNGKey(0), base)
        init = to_np(state.params)
        res = fit(algo.step, state, base, lambda step, ctx: (batch_fn(step, ctx), {"host": float(step)}),
                  run=RunConfig(max_steps=3, progress=False), name=name)
        assert [r["step"] for r in res.history] == [0, 1, 2] and [r["host"] for r in res.history] == [0.0, 1.0, 2.0]
        assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 and r["updates"] >= 1 for r in res.history), name
        changed = [np.any(a != b) for a, b in zip(jax.tree_util.tree_leaves(init),
                                                   jax.tree_util.tree_leaves(to_np(res.state.params)))]
        assert any(changed), name
        assert int(res.state.step) == 3
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, to_np(base))  # the base: frozen throughout


def _sft(tiny, out, steps, **run):
    cfg, tok, base = tiny
    optim = run.pop("optim", OptimConfig(learning_rate=1e-2))
    lora = run.pop("lora", LoraConfig(rank=2, alpha=4.0))
    return train_sft(cfg, run.pop("base", base), tok, SFT_ROWS, SFTConfig(
        lora=lora, batch_size=8, max_length=10, eval_fraction=0.0, optim=optim,
        run=RunConfig(max_steps=steps, out_dir=str(out), progress=False, tensorboard=False, **run)))


def test_nonfinite_base_stops_at_once_naming_the_tensor(tiny, tmp_path):
    cfg, tok, base = tiny
    bad = dict(base, lm_head=base["lm_head"].at[0, 0].set(jnp.nan))
    with pytest.raises(NonFiniteError, match="lm_head"):
        _sft(tiny, tmp_path / "nan", 3, base=bad, checkpoint_every=1)
    assert not os.path.exists(tmp_path / "nan" / "checkpoints")


def test_nonfinite_rewards_stop_after_the_allowed_skips_and_keep_the_last_good_checkpoint(tiny, tmp_path):
    """A reward function that turns bad after two steps (NaN, then 1e30 beyond the bound): each
    bad step's updates are skipped and counted; the second bad step in a row stops the run before
    its checkpoint; the checkpoints hold the last good state only."""
    from rlhf_jax.train import train_ppo

    cfg, tok, base = tiny
    calls = []

    def reward(prompts, completions):
        calls.append(1)
        n = len(calls)
        return [0.1] * len(completions) if n <= 2 else [np.nan if n == 3 else 1e30] * len(completions)

    config = PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, critic_init="zero",
                       sampling=SamplingConfig(max_new_tokens=4),
                       run=RunConfig(max_steps=10, out_dir=str(tmp_path / "ppo"), progress=False, tensorboard=False,
                                     checkpoint_every=1, keep_checkpoints=5, max_skipped_steps=2))
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        train_ppo(cfg, base, tok, tiny_prompts(16), reward, config)
    rows = [json.loads(line) for line in open(tmp_path / "ppo" / "metrics.jsonl")]
    assert [r["skipped"] for r in rows] == [0, 0, 1, 2] and [r["bad_scores"] for r in rows] == [0, 0, 8, 8]
    # the state after a skipped update is the last good one (saved at 3); the stop comes before 4
    assert sorted(os.listdir(tmp_path / "ppo" / "checkpoints")) == ["1", "2", "3"]


def _flip_bytes(path, n=64):
    data = bytearray(open(path, "rb").read())
    for i in range(min(n, len(data))):
        data[len(data) // 2 + i - n // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty_manifest"])
def test_corrupt_latest_checkpoint_is_named_and_the_previous_one_used(tiny, tmp_path, capsys, damage):
    straight = _sft(tiny, tmp_path / "straight", 6)
    _sft(tiny, tmp_path / "run", 4, checkpoint_every=2, keep_checkpoints=3)
    latest = tmp_path / "run" / "checkpoints" / "4"
    if damage == "flip":
        _flip_bytes(_largest_file(latest))
    elif damage == "truncate":
        big = _largest_file(latest)
        open(big, "r+b").truncate(os.path.getsize(big) // 2)
    else:
        open(tmp_path / "run" / "checkpoint_manifests" / "4.json", "w").close()
    capsys.readouterr()
    resumed = _sft(tiny, tmp_path / "run", 6, checkpoint_every=2, keep_checkpoints=3)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "checkpoint step 4" in line]
    assert len(lines) == 1 and "not usable" in lines[0], err  # one line naming the step (and the file)
    if damage != "empty_manifest":
        assert "does not match its checksum" in lines[0] or "missing" in lines[0]
    assert "resuming from step 2" in err
    assert os.path.isdir(tmp_path / "run" / "corrupt_checkpoints" / "4")
    # from step 2 the run replays steps 2..5 exactly: the same adapter as the straight run
    jax.tree_util.tree_map(np.testing.assert_array_equal, to_np(straight.lora.tree), to_np(resumed.lora.tree))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_no_intact_checkpoint_fails_clearly(tiny, tmp_path):
    _sft(tiny, tmp_path / "run", 2, checkpoint_every=2)
    _flip_bytes(_largest_file(tmp_path / "run" / "checkpoints" / "2"))
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        _sft(tiny, tmp_path / "run", 4, checkpoint_every=2)


def test_changed_setup_refuses_to_resume_and_lists_the_fields(tiny, tmp_path, capsys):
    _sft(tiny, tmp_path / "run", 2, checkpoint_every=2)
    with pytest.raises(CheckpointError) as e:
        _sft(tiny, tmp_path / "run", 4, checkpoint_every=2, seed=7, optim=OptimConfig(learning_rate=5e-3))
    assert "optim.learning_rate: 0.01 -> 0.005" in str(e.value) and "run.seed: 0 -> 7" in str(e.value)
    assert "--run.resume force" in str(e.value)
    with pytest.raises(CheckpointError, match=r"lora.rank: 2 -> 4"):  # not a 763-line traceback
        _sft(tiny, tmp_path / "run", 4, checkpoint_every=2, lora=LoraConfig(rank=4, alpha=4.0))
    cfg, tok, base = tiny
    with pytest.raises(CheckpointError, match="base model weights: fingerprint"):
        _sft(tiny, tmp_path / "run", 4, checkpoint_every=2, base=dict(base, lm_head=base["lm_head"] * 2))
    # more steps is a resume; "never" starts afresh; "force" resumes and says what changed
    capsys.readouterr()
    longer = _sft(tiny, tmp_path / "run", 3, checkpoint_every=2)
    assert "resuming from step 2" in capsys.readouterr().err and len(longer.history) == 3
    forced = _sft(tiny, tmp_path / "run", 3, checkpoint_every=2, resume="force", seed=7)
    assert "resume='force' with changes: run.seed" in capsys.readouterr().err and len(forced.history) == 3
    fresh = _sft(tiny, tmp_path / "run", 1, checkpoint_every=1, resume="never", seed=7)
    assert "removed" in capsys.readouterr().err and [r["step"] for r in fresh.history] == [0]


def test_a_cut_metrics_line_is_dropped_with_a_notice(tiny, tmp_path, capsys):
    _sft(tiny, tmp_path / "run", 2, checkpoint_every=2)
    path = tmp_path / "run" / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text + '{"step": 2, "loss": 0.1')  # a crash in the middle of a line
    capsys.readouterr()
    res = _sft(tiny, tmp_path / "run", 3, checkpoint_every=2)
    assert "dropped 1 unreadable line" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in open(path)] == [0, 1, 2] and len(res.history) == 3


def test_nonfinite_state_is_never_checkpointed(tmp_path):
    from rlhf_jax.train import Checkpoints

    ck = Checkpoints(RunConfig(out_dir=str(tmp_path), checkpoint_every=1))
    with pytest.raises(NonFiniteError, match=r"params/w.*not saved"):
        ck.maybe_save(1, {"params": {"w": jnp.array([1.0, jnp.inf])}})
    assert not os.path.exists(tmp_path / "checkpoints" / "1")
