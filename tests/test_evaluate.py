"""Before/after evaluation: KL of the base against itself is exactly 0, CI and distinct-n by hand,
scorers see the decoded completions, report files, in-graph reward and KL against an independent
recomputation, paired differences, clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.evaluate import (EvalConfig, EvaluationReport, ModelSpec, compare, completion_words, distinct_n,
                               evaluate, format_comparison, jackknife_interval, mean_interval, ngram_counts,
                               normal_interval)
from rlhf_jax.lora import Adapter, LoraConfig, init_lora, model_variables
from rlhf_jax.losses import token_logprobs
from rlhf_jax.model import Transformer, init_head
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.rollout import cached_sampler
from rlhf_jax.scoring import FunctionScorer, ModelScorer, RewardModel, reward_scores
from tests.trainer_fixtures import tiny_base, tiny_config, tiny_prompts, tiny_tokenizer

N_NEW, S, BS = 6, 3, 8
PROMPTS = tiny_prompts(5)  # 15 rows: two batches of 8, the second padded with one repeat
LORA = LoraConfig(rank=4, alpha=8.0)
SPECIAL = {"<pad>", "<s>", "</s>", "<unk>"}


def _eval_config(**kw):
    return EvalConfig(sampling=SamplingConfig(max_new_tokens=N_NEW), samples_per_prompt=S, batch_size=BS,
                      seed=3, progress=False, **kw)


@pytest.fixture(scope="module")
def world():
    cfg = tiny_config().replace(num_layers=1)  # one layer: half the compile time
    base = tiny_base(cfg)
    adapter = init_lora(Transformer(cfg, lora=LORA), jax.random.PRNGKey(1))
    # B = 0 at init would make the adapter a no-op: give it non-zero B.
    rng = np.random.default_rng(2)
    adapter = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(0.5 * rng.normal(size=x.shape), jnp.float32) if path[-1].key == "b" else x,
        adapter)
    sft = ModelSpec("sft", cfg, base)
    ppo = ModelSpec("ppo", cfg, base, Adapter(adapter, LORA))
    return cfg, tiny_tokenizer(), base, sft, ppo


class Recorder:
    """A scorer that records what it was given."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, prompts, completions):
        self.calls.append((list(prompts), list(completions)))
        return self.fn(prompts, completions)


@pytest.fixture(scope="module")
def evaluated(world):
    cfg, tok, base, sft, ppo = world
    reward = Recorder(lambda p, c: [c_.split().count("w7") for c_ in c])
    scorer = Recorder(lambda p, c: [float(c_.endswith("</s>")) for c_ in c])
    toxic_texts = []

    def toxicity(texts):
        toxic_texts.append(list(texts))
        return [0.9 if "w3" in t.split() else 0.1 for t in texts]

    report = evaluate([sft, ppo], reference=sft, tokenizer=tok, prompts=PROMPTS, config=_eval_config(),
                      reward=FunctionScorer(reward, name="count"), toxicity=toxicity, scorers={"finished": scorer})
    return report, reward, scorer, toxic_texts


def test_kl_of_base_against_itself_is_exactly_zero(evaluated):
    report = evaluated[0]
    assert report.metrics == ["reward", "toxicity", "finished", "kl", "length", "distinct_1", "distinct_2",
                              "unique_ratio", "cross_prompt_share", "entropy_bits", "all_identical_share"]
    assert np.array_equal(report.values["sft"]["kl"], np.zeros((len(PROMPTS), S)))
    iv = report.summary["sft"]["kl"]
    assert (iv.mean, iv.low, iv.high) == (0.0, 0.0, 0.0)
    # The adapter moves the distribution: k1 summed over tokens is an unbiased estimate of KL > 0.
    assert report.summary["ppo"]["kl"].mean > 0.5
    assert report.values["ppo"]["kl"].shape == (len(PROMPTS), S)


def test_scorers_receive_the_decoded_completions(evaluated, world):
    report, reward, scorer, toxic_texts = evaluated
    assert len(scorer.calls) == 2 and len(toxic_texts) == 2  # once per model
    rows = [p for p in PROMPTS for _ in range(S)]  # row p * S + s is sample s of prompt p
    # the reward is a scorer of generated batches: once per batch of BS rows (the last batch padded
    # with repeats of its last row, dropped from the report)
    per_model = -(-len(rows) // BS)
    assert len(reward.calls) == 2 * per_model and all(len(c[0]) == BS for c in reward.calls)
    joined = [tuple(sum((list(c[i]) for c in reward.calls[k * per_model:(k + 1) * per_model]), [])[:len(rows)]
                    for i in (0, 1)) for k in range(2)]
    for m, (prompts, texts), (r_prompts, r_texts), t_texts in zip(report.models, scorer.calls, joined, toxic_texts):
        assert prompts == rows and r_prompts == rows
        assert texts == [c for row in report.completions[m] for c in row] == t_texts
        lengths = report.values[m]["length"].reshape(-1)
        for text, r_text, n in zip(texts, r_texts, lengths):
            words = text.split()
            assert 1 <= len(words) <= N_NEW and n == len(words)  # word-level tokenizer: a word per token
            # Special tokens kept for the scorers: a row that stopped early ends with EOS, and the
            # text reward sees the same completion decoded without special tokens (as in PPO).
            assert text.endswith("</s>") == (n < N_NEW or words[-1] == "</s>")
            assert r_text == " ".join(w for w in words if w not in SPECIAL)
        expected = np.array([[float(c.endswith("</s>")) for c in row] for row in report.completions[m]])
        assert np.array_equal(report.values[m]["finished"], expected)
        assert np.array_equal(report.values[m]["reward"],
                              [[c.split().count("w7") for c in row] for row in report.completions[m]])


def test_distinct_n_of_the_report_is_over_completion_words(evaluated):
    report = evaluated[0]
    for m in report.models:
        words = [completion_words(c, sorted(SPECIAL)) for row in report.completions[m] for c in row]
        assert all(w not in SPECIAL for ws in words for w in ws)
        for n in (1, 2):
            assert report.summary[m][f"distinct_{n}"].mean == pytest.approx(distinct_n(words, n), abs=1e-12)


def test_report_files(evaluated, tmp_path):
    report = evaluated[0]
    md = report.to_markdown(str(tmp_path / "out" / "report.md"))
    report.to_json(str(tmp_path / "out" / "eval.json"))
    report.plot(str(tmp_path / "out" / "eval.png"))
    text = (tmp_path / "out" / "report.md").read_text()
    assert text == md
    for name in report.models + report.metrics:
        assert name in text
    assert "## Examples" in text and "## Settings" in text and "±" in text
    assert text.count("\n| w") == min(len(PROMPTS), 8)  # one example row per prompt (they start with w)
    png = (tmp_path / "out" / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    d = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert d["models"] == ["sft", "ppo"] and d["settings"]["samples_per_prompt"] == S
    assert d["summary"]["ppo"]["kl"]["mean"] == pytest.approx(report.summary["ppo"]["kl"].mean)
    back = EvaluationReport.from_json(str(tmp_path / "out" / "eval.json"))
    assert back.summary == report.summary and back.completions == report.completions


def test_compare_signs(evaluated):
    report = evaluated[0]
    fwd, rev = compare(report, before="sft", after="ppo"), compare(report, before="ppo", after="sft")
    assert list(fwd) == report.metrics
    assert fwd["kl"].diff.mean == pytest.approx(report.summary["ppo"]["kl"].mean) and fwd["kl"].significant
    for k in report.metrics:
        d, r = fwd[k], rev[k]
        assert d.diff.mean == pytest.approx(d.after - d.before, abs=1e-12)
        assert r.diff.mean == pytest.approx(-d.diff.mean, abs=1e-12)
        if not np.isnan(d.diff.low):
            assert (r.diff.low, r.diff.high) == pytest.approx((-d.diff.high, -d.diff.low), abs=1e-12)
    assert "| kl |" in format_comparison(fwd, "sft", "ppo")


def test_compare_is_paired_by_prompt():
    # Per-prompt means before [1, 2, 3], after [2, 2, 5] -> d = [1, 0, 2]: mean 1, sd 1,
    # SE = 1 / sqrt(3) = 0.57735, half-width 1.959964 * 0.57735 = 1.131585.
    before = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    after = np.array([[2.0, 2.0], [1.0, 3.0], [5.0, 5.0]])
    report = EvaluationReport(models=["sft", "ppo"], metrics=["toxicity"], prompts=["a", "b", "c"],
                              values={"sft": {"toxicity": before}, "ppo": {"toxicity": after}},
                              completions={"sft": [["x", "y"]] * 3, "ppo": [["x", "y"]] * 3}, settings={})
    d = compare(report, before="sft", after="ppo")["toxicity"]
    assert (d.before, d.after, d.diff.mean, d.ratio) == pytest.approx((2.0, 3.0, 1.0, 1.5))
    assert d.diff.se == pytest.approx(1 / np.sqrt(3))
    assert (d.diff.low, d.diff.high) == pytest.approx((1 - 1.131585, 1 + 1.131585), abs=1e-6)
    assert not d.significant


def test_normal_interval_by_hand():
    # Per-prompt means of [[1, 2], [3, 5], [0, 1]] are 1.5, 4, 0.5: mean 2; squared deviations
    # 0.25 + 4 + 2.25 = 6.5, sample variance 6.5 / 2 = 3.25, SE = sqrt(3.25 / 3) = 1.040833;
    # 95 %: z = 1.959964, half-width 1.959964 * 1.040833 = 2.039995 -> [-0.039995, 4.039995].
    x = np.array([[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]])
    iv = normal_interval(x)
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.se == pytest.approx(1.040833, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((-0.039995, 4.039995), abs=1e-6)
    m = x.mean(axis=1)  # the same with NumPy's formula
    assert iv.se == pytest.approx(np.std(m, ddof=1) / np.sqrt(len(m)))
    assert normal_interval(x, confidence=0.9).high == pytest.approx(2 + 1.644854 * 1.040833, abs=1e-6)
    # One prompt: no interval.
    assert np.isnan(normal_interval(x[:1]).low)


def test_bootstrap_interval_covers_the_mean():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(200, 2))
    iv, nv = mean_interval(x, method="bootstrap", samples=2000, seed=0), normal_interval(x)
    assert iv.mean == nv.mean and iv.low < iv.mean < iv.high
    assert iv.high - iv.low == pytest.approx(nv.high - nv.low, rel=0.1)  # ~ normal for a mean of 200


def test_jackknife_of_a_mean_is_the_usual_standard_error():
    # For the mean, the delete-one jackknife SE equals std(ddof=1) / sqrt(P) exactly.
    m = np.array([1.5, 4.0, 0.5, 2.0])
    loo = (m.sum() - m) / (len(m) - 1)
    iv = jackknife_interval(m.mean(), loo)
    assert iv.se == pytest.approx(np.std(m, ddof=1) / 2)
    assert (iv.low, iv.high) == pytest.approx((normal_interval(m).low, normal_interval(m).high))


def test_distinct_n_by_hand():
    seqs = [["a", "b", "a"], ["a", "b"]]
    # unigrams a b a | a b: 5 in all, 2 unique -> 0.4; bigrams ab ba | ab: 3, 2 unique -> 2/3.
    assert distinct_n(seqs, 1) == pytest.approx(0.4)
    assert distinct_n(seqs, 2) == pytest.approx(2 / 3)
    assert distinct_n([["a"]], 2) == 0.0  # no bigram at all
    # Prompts as clusters: p0 = {a b a}, p1 = {c}: 3 unique of 4 = 0.75; leaving p0 out -> c: 1/1,
    # leaving p1 out -> a b a: 2/3.
    counts = ngram_counts([[["a", "b", "a"]], [["c"]]], 1)
    assert counts.distinct() == 0.75
    assert counts.leave_one_out() == pytest.approx([1.0, 2 / 3])
    assert completion_words("w1 w2</s>", ["</s>"]) == ["w1", "w2"]


def test_in_graph_reward_and_kl_match_an_independent_recomputation(world):
    """A reward model is scored on prompt + completion tokens; the KL column is sum(log pi - log
    pi_ref) over the response. Both are recomputed here from the same rollout (batch i samples
    with fold_in(PRNGKey(seed), i); rows are prompt-major)."""
    cfg, tok, base, sft, ppo = world
    rl = LoraConfig(rank=2, alpha=4.0)
    rm_lora = init_lora(Transformer(cfg, lora=rl), jax.random.PRNGKey(5))
    rm = RewardModel(Adapter(rm_lora, rl), init_head(jax.random.PRNGKey(6), cfg.hidden_size), gain=2.0, bias=0.5)
    reward = ModelScorer(cfg, rm)
    config = _eval_config(keep_special_tokens=False)
    report = evaluate([ppo], reference=sft, tokenizer=tok, prompts=PROMPTS[:2], config=config, reward=reward)

    ids = tok(PROMPTS[:2])["input_ids"]
    tokens = np.zeros((BS, 16), np.int32)  # one bucket of 16, left padded with the pad id 0
    mask = np.zeros((BS, 16), np.int32)
    rows = [0, 0, 0, 1, 1, 1, 1, 1]  # 2 prompts x 3 samples, padded to 8 rows with the last one
    for r, p in enumerate(rows):
        tokens[r, 16 - len(ids[p]):], mask[r, 16 - len(ids[p]):] = ids[p], 1
    ro = cached_sampler(cfg, LORA, config.sampling)(model_variables(ppo.base, ppo.trainable), tokens, mask,
                                              jax.random.fold_in(jax.random.PRNGKey(3), 0))

    @jax.jit  # jitted only to compile once instead of op by op
    def independent(ro):
        expected = reward_scores(cfg, rm, base, ro.tokens, ro.attention_mask)
        # KL from the sampler's own (cached decode) log-probs and a reference forward pass.
        ref_logits = Transformer(cfg).apply({"params": base}, ro.tokens, attention_mask=ro.attention_mask).logits
        ref_lp = token_logprobs(ref_logits[:, 15:15 + N_NEW], ro.response_tokens)
        return expected, jnp.sum((ro.logprobs - ref_lp) * ro.response_mask, axis=1)

    expected, kl = independent(ro)
    expected, kl = expected[:6], kl[:6]
    assert report.values["ppo"]["reward"].reshape(-1) == pytest.approx(np.asarray(expected), abs=1e-5)
    assert report.values["ppo"]["kl"].reshape(-1) == pytest.approx(np.asarray(kl), abs=1e-4)
    assert report.values["ppo"]["length"].reshape(-1).tolist() == np.asarray(ro.lengths)[:6].tolist()
    texts = [c for row in report.completions["ppo"] for c in row]
    assert all("</s>" not in t for t in texts)  # keep_special_tokens=False


def test_wrong_count_scorer_is_named(world):
    cfg, tok, base, sft, ppo = world
    with pytest.raises(ValueError, match=r"scorer 'gold' returned 2 values for 15 completions"):
        evaluate([sft], reference=sft, tokenizer=tok, prompts=PROMPTS, config=_eval_config(),
                 scorers={"gold": lambda p, c: [0.0, 1.0]})
    with pytest.raises(ValueError, match=r"scorer 'toxicity' returned non-finite values at completions \[0\]"):
        evaluate([sft], reference=sft, tokenizer=tok, prompts=PROMPTS, config=_eval_config(),
                 toxicity=lambda c: [np.nan] + [0.0] * (len(c) - 1))


def test_errors_before_any_generation(world):
    cfg, tok, base, sft, ppo = world
    kw = dict(reference=sft, tokenizer=tok, config=_eval_config())
    with pytest.raises(ValueError, match="no prompts"):
        evaluate([sft], prompts=[], **kw)
    small = ModelSpec("small", cfg.replace(vocab_size=10), base)
    with pytest.raises(ValueError, match=r"'small' has vocab_size 10 but the tokenizer has 20 tokens"):
        evaluate([small], prompts=PROMPTS, **kw)
    big = ModelSpec("big", cfg.replace(vocab_size=32), base)
    with pytest.raises(ValueError, match=r"'big': the embedding has 20 rows but its config says vocab_size 32"):
        evaluate([big], prompts=PROMPTS, **kw)
    with pytest.raises(ValueError, match="needs the base"):
        evaluate([ppo._replace(base=None)], prompts=PROMPTS, **kw)
    with pytest.raises(ValueError, match="unique"):
        evaluate([sft, sft], prompts=PROMPTS, **kw)
    with pytest.raises(ValueError, match="clash"):
        evaluate([sft], prompts=PROMPTS, scorers={"kl": lambda p, c: c}, **kw)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        EvalConfig(sampling=SamplingConfig(max_new_tokens=4), samples_per_prompt=0)
    with pytest.raises(ValueError, match="ci"):
        EvalConfig(sampling=SamplingConfig(max_new_tokens=4), ci="t")


def test_groups_on_topic_and_greedy_reach_the_report(world):
    cfg, tok, base, sft, ppo = world
    on_topic = Recorder(lambda p, c: [float("w7" in c_.split()) for c_ in c])
    groups = lambda p: "short" if len(p.split()) < 3 else "long"  # noqa: E731
    config = EvalConfig(sampling=SamplingConfig(max_new_tokens=N_NEW, greedy=True), samples_per_prompt=2,
                        batch_size=BS, seed=3, progress=False)
    report = evaluate([sft, ppo], reference=sft, tokenizer=tok, prompts=PROMPTS, config=config, on_topic=on_topic,
                      groups=groups)
    assert report.metrics == ["on_topic", "kl", "length", "distinct_1", "distinct_2", "unique_ratio",
                              "cross_prompt_share", "entropy_bits", "all_identical_share", "distinct_outputs"]
    assert report.groups == [groups(p) for p in PROMPTS] and set(report.by_group) == {"short", "long"}
    for m, (prompts, texts) in zip(report.models, on_topic.calls):
        assert prompts == [p for p in PROMPTS for _ in range(2)]
        assert texts == [c for row in report.completions[m] for c in row]
        assert np.array_equal(report.values[m]["on_topic"].reshape(-1), [float("w7" in t.split()) for t in texts])
        # Greedy decoding: both samples of a prompt are the one output, and distinct_outputs
        # counts the distinct outputs over the prompts.
        assert all(row[0] == row[1] for row in report.completions[m])
        assert report.summary[m]["all_identical_share"].mean == 1.0
        assert report.summary[m]["distinct_outputs"].mean == len({row[0] for row in report.completions[m]})
        for g in ("short", "long"):
            rows = [row[0] for row, label in zip(report.completions[m], report.groups) if label == g]
            assert report.by_group[g][m]["distinct_outputs"].mean == len(set(rows))
    assert "greedy decoding" in report.settings["metric_descriptions"]["distinct_outputs"]
    with pytest.raises(ValueError, match=r"scorer 'on_topic' must return 0/1 or a probability in \[0, 1\]; got 2.0"):
        evaluate([sft], reference=sft, tokenizer=tok, prompts=PROMPTS, config=config,
                 on_topic=lambda p, c: [2.0] * len(c))
    with pytest.raises(ValueError, match="groups has 2 labels for 5 prompts"):
        evaluate([sft], reference=sft, tokenizer=tok, prompts=PROMPTS, config=config, groups=["a", "b"])
    with pytest.raises(ValueError, match="clash"):
        evaluate([sft], reference=sft, tokenizer=tok, prompts=PROMPTS, config=config,
                 scorers={"on_topic": lambda p, c: c})
