"""DPO / IPO / cDPO: the step's objective against TRL 1.12's loss lines and hand-worked numbers; the
policy equals the reference at step 0 (log-ratio exactly 0, LoRA and full fine-tuning); cached
reference log-probs == in-step; a learning test (held-out preference accuracy rises); bit-identical
resume; the base stays frozen."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import Adapter, LoraConfig
from rlhf_jax.train import (DPOConfig, OptimConfig, RunConfig, encode_dpo_data, make_dpo, make_optimizer,
                            precompute_reference, train_dpo)
from rlhf_jax.train.dpo import dpo_objective, dpo_rows, pair_logprobs
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_tokenizer

to_np = lambda tree: jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _pairs(n, good="w14", bad="w15"):
    # the chosen completion ends with `good`, the rejected one with `bad` (same start): learnable
    # from the last token. The learning test picks the ending the random base prefers as the
    # rejected one, so the policy must turn its preference around.
    return [{"prompt": f"w{i % 7} w{(i + 3) % 7}", "chosen": f"w{8 + i % 5} {good}", "rejected": f"w{8 + i % 5} {bad}"}
            for i in range(n)]


def _config(steps, **kw):
    run = kw.pop("run", {})
    return DPOConfig(**{**dict(lora=LoraConfig(rank=2, alpha=4.0), batch_size=8, max_prompt_length=8,
                               max_completion_length=8, eval_fraction=0.25, optim=OptimConfig(learning_rate=1e-2)),
                        **kw}, run=RunConfig(max_steps=steps, progress=False, tensorboard=False, **run))


@pytest.fixture(scope="module")
def tiny():
    cfg, tok = tiny_config(), tiny_tokenizer()
    return cfg, tok, jax.jit(lambda: tiny_base(cfg))()


# --------------------------------------------------------------------------------------------
# the objective


def test_objective_hand_worked():
    # policy log-probs (chosen, rejected) = (-1, -3), reference (-2, -2): log-ratios +1, -1;
    # beta = 0.5: rewards +0.5, -0.5, h = 2, beta h = 1
    policy, reference = jnp.array([[-1.0, -3.0]]), jnp.array([[-2.0, -2.0]])
    lengths = jnp.array([[2.0, 4.0]])
    cfg = lambda **kw: DPOConfig(beta=0.5, **kw)
    loss, m = dpo_objective(cfg(), policy, reference, lengths)
    np.testing.assert_allclose(loss, 0.313262, atol=1e-6)  # -log sigmoid(1) = log(1 + e^-1) = 0.313262
    assert {k: round(float(v), 6) for k, v in m.items()} == {
        "rewards_chosen": 0.5, "rewards_rejected": -0.5, "accuracy": 1.0, "margin": 1.0,
        "logps_chosen": -1.0, "logps_rejected": -3.0, "logratio": 0.0}  # (+1 - 1) / 6 tokens
    # cDPO, e = 0.1: 0.9 * 0.313262 + 0.1 * -log sigmoid(-1) (= 1.313262) = 0.413262
    np.testing.assert_allclose(dpo_objective(cfg(label_smoothing=0.1), policy, reference, lengths)[0], 0.413262,
                               atol=1e-6)
    # IPO on per-token averages: +1 / 2 - (-1 / 4) = 0.75; target 1 / (2 * 0.5) = 1: (0.75 - 1)^2 = 0.0625
    np.testing.assert_allclose(dpo_objective(cfg(loss="ipo"), policy, reference, lengths)[0], 0.0625, atol=1e-7)


def test_objective_matches_trl_1_12_loss_lines():
    """TRL 1.12 has no standalone DPO loss function: these are the lines of
    ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py, f_divergence_type "reverse_kl",
    ld_alpha None) transcribed on the same arrays. cDPO: TRL 1.12's "sigmoid" has no label
    smoothing; the per-pair cDPO weighting is the one its "aot" / "aot_unpaired" losses apply to
    their (sorted) deltas, transcribed here on the unsorted per-pair delta."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    b, beta, eps = 16, 0.1, 0.2
    pol, ref = rng.normal(-20, 5, (b, 2)).astype(np.float32), rng.normal(-20, 5, (b, 2)).astype(np.float32)
    mask = (np.arange(12)[None] < rng.integers(1, 13, (2 * b, 1))).astype(np.int64)  # TRL: [chosen; rejected] rows
    lengths = np.stack([mask[:b].sum(1), mask[b:].sum(1)], 1).astype(np.float32)
    chosen_logps, rejected_logps = torch.tensor(pol[:, 0]), torch.tensor(pol[:, 1])
    ref_chosen_logps, ref_rejected_logps = torch.tensor(ref[:, 0]), torch.tensor(ref[:, 1])
    completion_mask = torch.tensor(mask)
    # --- transcribed from TRL 1.12 ---
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
    delta_score = chosen_scores - rejected_scores
    trl = {"sigmoid": (-F.logsigmoid(beta * delta_score)).mean()}
    chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
    chosen_avg_score = chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)
    rejected_avg_score = rejected_scores / rejected_mask.sum(dim=1).clamp(min=1.0)
    ipo_delta = chosen_avg_score - rejected_avg_score
    trl["ipo"] = ((ipo_delta - 1 / (2 * beta)) ** 2).mean()
    trl["cdpo"] = (-F.logsigmoid(beta * delta_score) * (1 - eps) - F.logsigmoid(-beta * delta_score) * eps).mean()
    chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
    trl_metrics = {"rewards_chosen": chosen_rewards.mean(), "rewards_rejected": rejected_rewards.mean(),
                   "accuracy": (chosen_rewards > rejected_rewards).float().mean(),
                   "margin": (chosen_rewards - rejected_rewards).mean()}
    # --- end of TRL ---
    configs = {"sigmoid": DPOConfig(beta=beta), "ipo": DPOConfig(beta=beta, loss="ipo"),
               "cdpo": DPOConfig(beta=beta, label_smoothing=eps)}
    for name, c in configs.items():
        loss, metrics = jax.jit(lambda p, r, n: dpo_objective(c, p, r, n))(pol, ref, lengths)
        np.testing.assert_allclose(loss, trl[name].item(), rtol=1e-5, err_msg=name)
        for k, v in trl_metrics.items():
            np.testing.assert_allclose(metrics[k], v.item(), rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")


# --------------------------------------------------------------------------------------------
# the step


def test_step0_policy_is_the_reference_and_cached_reference_equals_in_step(tiny):
    """At step 0 the policy (a B = 0 adapter) IS the reference: every log-ratio is exactly 0 and
    the loss is log 2. Then three steps with the reference cached once for the data equal three
    steps with the reference in the step; the base is never changed. (Full fine-tuning's step 0:
    ``test_ipo_cdpo_full_finetuning_and_cached_reference_train``.)"""
    cfg, tok, base = tiny
    before = to_np(base)
    arrays, _ = encode_dpo_data(tok, _pairs(24), _config(1))
    cached = dict(arrays, ref_logps=precompute_reference(cfg, base, arrays, batch_size=8))
    runs = {}
    for mode, data in (("step", arrays), ("cached", cached)):
        config = _config(1, reference=mode)
        algo = make_dpo(cfg, make_optimizer(config.optim), config)
        state = algo.init(jax.random.PRNGKey(0), base)
        step = jax.jit(algo.step)
        history = []
        for i in range(3):
            state, m = step(state, base, jax.tree_util.tree_map(jnp.asarray, dpo_rows(data, slice(8 * i, 8 * i + 8),
                                                                                       8)))
            history.append(to_np(m))
        runs[mode] = (history, to_np(state.params))
    first = runs["step"][0][0]
    assert first["logratio"] == 0.0 and first["rewards_chosen"] == 0.0 and first["margin"] == 0.0
    np.testing.assert_allclose(first["loss"], math.log(2), rtol=1e-6)
    assert isinstance(runs["step"][1], Adapter)
    for a, b in zip(runs["step"][0], runs["cached"][0]):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(runs["step"][1]), jax.tree_util.tree_leaves(runs["cached"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, to_np(base))


@pytest.mark.slow
def test_learning_raises_heldout_preference_accuracy_and_resume_is_bit_identical(tiny, tmp_path):
    """Held-out pairs: the policy's own preference (log pi(chosen) > log pi(rejected)) starts
    wrong (the base prefers the rejected ending) and ends right; the implicit-reward accuracy
    rises from 0 (all ties at step 0) to 1 and the loss falls below log 2. A run stopped at step
    4 and resumed to 8 equals the straight run bit for bit."""
    cfg, tok, base = tiny
    logps = jax.jit(lambda tr, batch: pair_logprobs(cfg, tr, base, batch))

    def held_out(data):  # the driver's held-out split
        arrays, _ = encode_dpo_data(tok, data, _config(1))
        return dpo_rows(arrays, np.random.default_rng(0).permutation(48)[:12], 8)

    # the (chosen, rejected) endings whose held-out pairs the random base gets most wrong (which
    # ones depends on the init draws): the policy must turn its preference around
    def base_accuracy(data):
        lp = np.asarray(logps(None, held_out(data)))
        return np.mean(lp[:, 0] > lp[:, 1])
    data = min((_pairs(48, good=f"w{g}", bad=f"w{b}") for g in range(11, 16) for b in range(11, 16) if g != b),
               key=base_accuracy)
    held = held_out(data)
    straight = train_dpo(cfg, base, tok, data, _config(8, eval_every=4, run=dict(out_dir=str(tmp_path / "straight"))))
    before, after = np.asarray(logps(None, held)), np.asarray(logps(straight.policy, held))
    assert np.mean(before[:, 0] > before[:, 1]) <= 0.25 and np.mean(after[:, 0] > after[:, 1]) == 1.0
    evals = [r for r in straight.history if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 7]
    assert straight.history[0]["accuracy"] == 0.0 and straight.eval["eval_accuracy"] == 1.0
    assert straight.eval["eval_loss"] < 0.5 * math.log(2) and straight.eval["eval_margin"] > 0
    assert straight.report.kept == 48 and straight.report.truncated == 0

    train_dpo(cfg, base, tok, data, _config(4, eval_every=4, run=dict(out_dir=str(tmp_path / "r"), checkpoint_every=4)))
    resumed = train_dpo(cfg, base, tok, data, _config(8, eval_every=4, run=dict(out_dir=str(tmp_path / "r"),
                                                                                   checkpoint_every=4)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, to_np(straight.policy), to_np(resumed.policy))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    rows = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(8))
    assert (tmp_path / "straight" / "dpo_curves.png").exists()


def test_ipo_cdpo_full_finetuning_and_cached_reference_train(tiny):
    """IPO, cDPO with full fine-tuning and a cached reference: finite, the loss falls, the policy
    is a full tree (a copy of the base at step 0: log-ratio exactly 0) and the base is untouched."""
    cfg, tok, base = tiny
    before = to_np(base)
    for config in (_config(3, loss="ipo", beta=0.5, eval_fraction=0.0),
                   _config(3, lora=None, label_smoothing=0.1, reference="cached", eval_fraction=0.0,
                           optim=OptimConfig(learning_rate=1e-3))):
        res = train_dpo(cfg, base, tok, _pairs(16), config)
        losses = [r["loss"] for r in res.history]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0] and res.history[-1]["skipped"] == 0
        assert isinstance(res.policy, Adapter) == (config.lora is not None) and res.history[0]["logratio"] == 0.0
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, to_np(base))


def test_config_and_length_errors_are_one_clear_line(tiny):
    cfg, tok, base = tiny
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(loss="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="reference"):
        DPOConfig(reference="copy")
    with pytest.raises(ValueError, match=r"max_prompt_length 30 \+ max_completion_length 8 = 38 is beyond the model's "
                                         r"context of 32"):
        train_dpo(cfg, base, tok, _pairs(16), _config(1, max_prompt_length=30))
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        train_dpo(cfg, base, tok, _pairs(8), _config(1))


@pytest.mark.parametrize("loss,chunk", [("sigmoid", 0), ("ipo", 2)])
def test_prompt_once_loss_and_gradients_equal_the_unshared_pass(loss, chunk):
    """The step's loss, metrics and gradients (w.r.t. the adapter, B != 0, and the base) with each
    prompt computed once (and, for IPO, the LM head over chunks of 2 positions) equal the plain
    whole-logit pass over ``prompt + chosen`` and ``prompt + rejected`` as two whole sequences
    (``rlhf_jax.rollout.response_logprobs``, as TRL computes them), within 1e-5 of each tensor's
    scale; left-padded prompts of lengths 6, 1, 3, completions of 1..5 tokens."""
    from rlhf_jax.losses import sequence_logprobs
    from rlhf_jax.rollout import response_logprobs
    from rlhf_jax.train.dpo import DPOBatch, dpo_batch_loss
    from tests.test_shared_prefix import _adapter, _batch, assert_trees_close

    cfg = tiny_config()
    base, adapter = jax.jit(lambda: tiny_base(cfg))(), jax.jit(lambda: _adapter(cfg))()
    pt, pm, ct, cm, full, fmask = _batch(2)
    b, n = pt.shape[0], ct.shape[1]
    batch = DPOBatch(pt, pm, ct.reshape(b, 2, n), cm.reshape(b, 2, n))
    config = DPOConfig(loss=loss, beta=0.5, logit_chunk=chunk)

    def unshared(tr, bs):
        seq = lambda t: sequence_logprobs(response_logprobs(cfg, t, bs, full, fmask, n), cm).reshape(b, 2)
        lengths = jnp.asarray(cm.sum(-1).reshape(b, 2), jnp.float32)
        return dpo_objective(config, seq(tr), jax.lax.stop_gradient(seq(None)), lengths)

    shared = lambda tr, bs: dpo_batch_loss(cfg, config, tr, bs, batch)
    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(adapter, base)
    ((l1, m1), (ga1, gb1)), ((l2, m2), (ga2, gb2)) = grad(shared), grad(unshared)
    assert abs(float(l2) - (math.log(2) if loss == "sigmoid" else 1.0)) > 1e-3  # the adapter moved the policy
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    for k in m2:
        np.testing.assert_allclose(m1[k], m2[k], atol=1e-5, err_msg=k)
    assert_trees_close(ga1, ga2, "adapter")
    assert_trees_close(gb1, gb2, "base")


def test_memory_estimate_equals_the_state_bytes_and_full_finetuning_holds_the_weights_twice(tiny):
    """``dpo_memory``: base, policy and optimizer bytes equal the real trees ``make_dpo``'s init
    builds; with full fine-tuning the policy is a second full copy of the base (the reference
    stays), with LoRA a small adapter."""
    from rlhf_jax.lora import tree_size
    from rlhf_jax.train.dpo import dpo_memory

    cfg, _, base = tiny
    out = {}
    for name, lora in (("lora", LoraConfig(rank=2, alpha=4.0)), ("full", None)):
        config = _config(1, lora=lora)
        est = dpo_memory(cfg, config)
        state = make_dpo(cfg, make_optimizer(config.optim), config).init(jax.random.PRNGKey(0), base)
        assert (est.base, est.policy, est.optimizer) == (tree_size(base)[1], tree_size(state.params)[1],
                                                          tree_size(state.opt_state)[1])
        assert est.total == est.held + est.activations + est.logits and est.activations > 0
        assert "total" in est.summary()
        out[name] = est
    assert out["full"].policy == out["full"].base and out["lora"].policy < out["full"].base / 5
    # float32: base + copy + its gradient + two Adam moments = 5x the base (+ Adam's step counter)
    assert 5 * out["full"].base <= out["full"].held <= 5 * out["full"].base + 16
    assert out["lora"].held < 1.5 * out["lora"].base
