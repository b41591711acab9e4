"""Reward-model training that generalises: label smoothing reaches the loss, early stopping keeps
the best evaluated state and stops, and train vs held-out accuracy are reported (recomputed here
from the returned model on the same split)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.config_checks import ConfigError
from rlhf_jax.feedback import BatchConfig, encode_pairs
from rlhf_jax.scoring import raw_scores
from rlhf_jax.train import OptimConfig, RewardConfig, RunConfig, train_reward_ensemble, train_reward_model
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer


def _pairs(n=64, noisy=False):
    """The preferred completion ends in w15, the other in w14 (learnable); ``noisy``: which one is
    preferred is a coin flip (nothing to learn: held-out accuracy wanders around 0.5)."""
    flip = np.random.default_rng(3).random(n) < 0.5 if noisy else np.zeros(n, bool)
    return [{"prompt": f"w{i % 7} w{(i + 3) % 7}", "chosen": f"w{8 + i % 5} w{14 if f else 15}",
             "rejected": f"w{8 + i % 5} w{15 if f else 14}"} for i, f in enumerate(flip)]


def _accuracy(cfg, base, tok, rm, rows) -> float:
    batch, _ = encode_pairs(tok, rows, config=BatchConfig(max_length=8))
    ids, mask = jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask)
    rc = np.asarray(raw_scores(cfg, rm, base, ids[:, 0], mask[:, 0]))
    rr = np.asarray(raw_scores(cfg, rm, base, ids[:, 1], mask[:, 1]))
    return float(np.mean(rc > rr))


def test_label_smoothing_bounds_the_training_loss():
    cfg, tok = tiny_config(), tiny_tokenizer()
    res = train_reward_model(cfg, tiny_base(cfg), tok, _pairs(), RewardConfig(
        batch_size=16, max_length=8, eval_fraction=0.25, label_smoothing=0.2, optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(max_steps=25, progress=False)))
    # per pair -(0.8) log s(z) - 0.2 log s(-z) >= its minimum at s(z) = 0.8, the binary entropy
    # H(0.2) = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.500402; the plain loss of this task falls below 0.3
    floor = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    losses = [r["loss"] for r in res.history]
    assert min(losses) >= floor - 1e-5 and losses[-1] < floor + 0.1
    assert res.eval["eval_accuracy"] >= 0.9


def test_early_stopping_keeps_the_best_state_and_stops():
    cfg, tok = tiny_config(), tiny_tokenizer()
    base, data, patience, every = tiny_base(cfg), _pairs(noisy=True), 2, 2
    config = RewardConfig(batch_size=16, max_length=8, eval_fraction=0.25, eval_every=every, early_stopping=patience,
                          optim=OptimConfig(learning_rate=3e-2), run=RunConfig(max_steps=60, progress=False, seed=1))
    res = train_reward_model(cfg, base, tok, data, config)
    assert res.stop_reason.startswith("early_stopping (2 evaluations without a better eval_accuracy")
    # the best evaluation, then `patience` evaluations that did not beat it, then the stop
    assert len(res.history) == res.best_step + patience * every < 60
    evals = [r for r in res.history if "eval_accuracy" in r]
    best = max(evals, key=lambda r: (r["eval_accuracy"], -r["eval_loss"]))
    assert best["step"] + 1 == res.best_step and res.eval == {k: best[k] for k in res.eval}
    # the returned model is that step's, not the last: recompute its accuracies on the same split
    order = np.random.default_rng(1).permutation(len(data))
    n_eval = 16
    held, train = [data[i] for i in order[:n_eval]], [data[i] for i in order[n_eval:]]
    assert _accuracy(cfg, base, tok, res.reward_model, held) == pytest.approx(res.eval["eval_accuracy"])
    assert _accuracy(cfg, base, tok, res.reward_model, train[:n_eval]) == pytest.approx(res.eval["train_accuracy"])
    last = res.state.params._replace(gain=1.0, bias=0.0)
    assert _accuracy(cfg, base, tok, last, held) == pytest.approx(evals[-1]["eval_accuracy"])


def test_train_only_pairs_are_trained_on_and_never_held_out():
    cfg, tok = tiny_config(), tiny_tokenizer()
    base, data = tiny_base(cfg), _pairs(noisy=True)
    # a second, learnable rule that only the train-only pairs carry: w13 beats w12
    extra = [{"prompt": f"w{i % 7}", "chosen": f"w{8 + i % 5} w13", "rejected": f"w{8 + i % 5} w12"} for i in range(48)]
    config = RewardConfig(batch_size=16, max_length=8, eval_fraction=0.25, eval_every=10,
                          optim=OptimConfig(learning_rate=1e-2), run=RunConfig(max_steps=30, progress=False, seed=1))
    res = train_reward_model(cfg, base, tok, data, config, train_only=extra)
    assert res.report.items == 64 + 48 and res.report.kept == 112
    # the held-out and train-probe rows are the labelled data's, split as without train_only
    order = np.random.default_rng(1).permutation(len(data))
    held, train = [data[i] for i in order[:16]], [data[i] for i in order[16:]]
    last = res.state.params._replace(gain=1.0, bias=0.0)
    final = [r for r in res.history if "eval_accuracy" in r][-1]
    assert _accuracy(cfg, base, tok, last, held) == pytest.approx(final["eval_accuracy"])
    assert _accuracy(cfg, base, tok, last, train[:16]) == pytest.approx(final["train_accuracy"])
    assert _accuracy(cfg, base, tok, last, extra) == 1.0  # trained on
    with pytest.raises(ValueError, match='train_only takes preference pairs; it needs loss="pairwise"'):
        train_reward_model(cfg, base, tok, [], RewardConfig(loss="ranking", max_length=8), train_only=extra)


def test_ensemble_members_share_the_split_and_differ():
    cfg, tok = tiny_config(), tiny_tokenizer()
    base = tiny_base(cfg)
    config = RewardConfig(batch_size=16, max_length=8, eval_fraction=0.25, optim=OptimConfig(learning_rate=1e-2),
                          run=RunConfig(max_steps=3, progress=False, seed=4))
    members = train_reward_ensemble(cfg, base, tok, _pairs(), config, members=2)
    heads = [np.asarray(m.reward_model.head["kernel"]) for m in members]
    assert not np.allclose(heads[0], heads[1])  # seeds 4 and 5
    single = train_reward_model(cfg, base, tok, _pairs(), config)  # member 0 is this run
    np.testing.assert_array_equal(np.asarray(single.reward_model.head["kernel"]), heads[0])
    assert all(set(m.eval) == {"eval_accuracy", "eval_loss", "train_accuracy", "train_loss"} for m in members)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="early_stopping must be 0 unless eval_every > 0"):
        RewardConfig(early_stopping=2)
    with pytest.raises(ConfigError, match="label_smoothing"):
        RewardConfig(label_smoothing=0.5)
    with pytest.raises(ValueError, match="members must be an integer >= 1"):
        train_reward_ensemble(tiny_config(), None, None, [], RewardConfig(), members=0)
