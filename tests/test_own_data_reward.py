"""A Hugging Face ``*ForSequenceClassification`` folder as our reward model (scores equal to
`transformers`' logits, right and left padding, its last-non-pad-token rule; the body shared with the
policy's base when the weights are the same), reward folders told apart, ``--reward_fn`` specs, and
the reward model's PEFT export (a SEQ_CLS adapter with the score head) loaded by `peft`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.lora import Adapter, LoraConfig
from rlhf_jax.model import CheckpointError, load_pretrained
from rlhf_jax.scoring import (Completions, FunctionScorer, HFClassifierScorer, ModelScorer, RewardModel,
                              WeightedScorer, build_scorer, hf_classifier_scores, load_hf_classifier,
                              reward_folder_kind, reward_scores, save_reward_model)
from tests.conftest import left_padded_batch
from tests.test_export_utils import random_lora, torch_forward

torch = pytest.importorskip("torch")


def _classifier_folder(causal_folder, out, *, seed=0, perturb=False):
    """``AutoModelForSequenceClassification`` (one label) on a causal checkpoint's body, with a random
    score head, saved by `transformers`; ``perturb`` changes one body weight."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(causal_folder, num_labels=1).float().eval()
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)
        if perturb:
            next(p for n, p in model.named_parameters() if "layers.1" in n or ".h.1." in n).add_(0.01)
    model.save_pretrained(out, safe_serialization=True)
    return model


def _batches():
    """Left-padded rows (one ending with a real token equal to the pad id 0, which Hugging Face does
    not read) and the same rows right padded."""
    tokens, mask = left_padded_batch(seed=3, batch=4, length=9)
    tokens[1, -1] = 0  # a final EOS that is also the pad token: the score is read one token earlier
    right_t, right_m = np.zeros_like(tokens), np.zeros_like(mask)
    for r in range(len(tokens)):
        real = tokens[r][mask[r] > 0]
        right_t[r, :len(real)], right_m[r, :len(real)] = real, 1
    return (tokens, mask), (right_t, right_m)


def _ours(classifier, base, tokens, mask):
    fn = jax.jit(lambda rm, b, t, m: hf_classifier_scores(classifier.model_config, rm, b, t, m,
                                                          pad_token_id=classifier.pad_token_id))
    return np.asarray(fn(classifier.reward_model, base, jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_hf_classifier_scores_equal_transformers_and_share_the_base(hf_checkpoints, tmp_path, kind):
    folder, _ = hf_checkpoints[kind]
    model = _classifier_folder(folder, tmp_path / "cls")
    (left_t, left_m), (right_t, right_m) = _batches()
    with torch.no_grad():
        hf_right = model(input_ids=torch.tensor(right_t, dtype=torch.long),
                         attention_mask=torch.tensor(right_m, dtype=torch.long)).logits.numpy()[:, 0]
    hf_left = torch_forward(model, left_t, left_m).logits.numpy()[:, 0]  # positions counted from the mask
    np.testing.assert_allclose(hf_left, hf_right, atol=1e-4)

    own = load_hf_classifier(tmp_path / "cls")  # no base given: the classifier holds its own tree
    assert not own.shared and own.reward_model.model is not None and own.pad_token_id == 0
    np.testing.assert_allclose(_ours(own, None, right_t, right_m), hf_right, atol=1e-4)
    np.testing.assert_allclose(_ours(own, None, left_t, left_m), hf_right, atol=1e-4)
    # row 1 ends with the pad id: read at the token before it, not at the last of the mask
    plain = np.asarray(reward_scores(own.model_config, own.reward_model, None, jnp.asarray(left_t),
                                     jnp.asarray(left_m)))
    assert abs(plain[1] - hf_right[1]) > 1e-3 and np.allclose(plain[[0, 2, 3]], hf_right[[0, 2, 3]], atol=1e-4)

    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    shared = load_hf_classifier(tmp_path / "cls", base=base, base_config=cfg)
    assert shared.shared and shared.reward_model.model is None and shared.model_config is cfg
    np.testing.assert_allclose(_ours(shared, base, left_t, left_m), hf_right, atol=1e-4)
    scorer = HFClassifierScorer(shared)  # the PPO scorer: scored on the policy's base passed at call time
    got = scorer(Completions(["p"] * 4, ["c"] * 4, jnp.asarray(left_t), jnp.asarray(left_m)), base)
    np.testing.assert_allclose(got, hf_right, atol=1e-4)

    _classifier_folder(folder, tmp_path / "other", perturb=True)  # other body weights: a tree of its own
    assert not load_hf_classifier(tmp_path / "other", base=base, base_config=cfg).shared


def test_bad_classifier_folders_are_named(hf_checkpoints, tmp_path):
    folder, _ = hf_checkpoints["qwen2"]
    with pytest.raises(CheckpointError, match="not a \\*ForSequenceClassification"):
        load_hf_classifier(folder)
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).save_pretrained(tmp_path / "three")
    with pytest.raises(CheckpointError, match="3 labels"):
        load_hf_classifier(tmp_path / "three")
    with pytest.raises(ValueError, match="neither a reward folder written by `rlhf-jax reward`"):
        reward_folder_kind(folder)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        reward_folder_kind(tmp_path / "missing")


def test_reward_folders_and_functions_make_one_scorer(hf_checkpoints, tmp_path, monkeypatch):
    folder, _ = hf_checkpoints["qwen2"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    _classifier_folder(folder, tmp_path / "cls")
    ours = tmp_path / "ours"
    save_reward_model(str(ours), RewardModel(None, {"kernel": jnp.ones(cfg.hidden_size), "bias": jnp.float32(0.5)}))
    assert reward_folder_kind(ours) == "rlhf_jax" and reward_folder_kind(tmp_path / "cls") == "hf_classifier"
    (tmp_path / "my_rewards.py").write_text("def length(prompts, completions):\n"
                                            "    return [len(c) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    from tests.test_export_utils import tiny_tokenizer

    tok = tiny_tokenizer()  # the checkpoints' 97-token vocabulary; the classifier folder has no tokenizer
    one = build_scorer(str(ours), [], model_config=cfg, base=base, tokenizer=tok)
    assert type(one) is ModelScorer
    hf = build_scorer(str(tmp_path / "cls"), [], model_config=cfg, base=base, tokenizer=tok)
    assert isinstance(hf, HFClassifierScorer) and hf.classifier.shared
    both = build_scorer(str(ours), ["my_rewards:length:0.5", "my_rewards.py:length"], model_config=cfg, base=base,
                        tokenizer=tok)
    assert isinstance(both, WeightedScorer)
    assert [(s.name, w) for s, w in both.items] == [("reward", 1.0), ("length", 0.5), ("length_2", 1.0)]
    (tokens, mask), _ = _batches()
    done = Completions(["a"] * 4, ["xy", "x", "xyz", ""], jnp.asarray(tokens), jnp.asarray(mask))
    score, parts = both.score_and_parts(done, base)
    np.testing.assert_allclose(score, parts["reward"] + 1.5 * np.array([2, 1, 3, 0]), rtol=1e-6)
    assert isinstance(build_scorer(None, ["my_rewards:length"], model_config=cfg, base=base, tokenizer=tok),
                      FunctionScorer)
    for spec, match in (("my_rewards:nope", "has no function 'nope'"), ("no_such_module:f", "cannot import"),
                        ("my_rewards:length:heavy", "must be a weight"), ("length", "expected module:function")):
        with pytest.raises(ValueError, match=match):
            build_scorer(None, [spec], model_config=cfg, base=base, tokenizer=tok)


def test_peft_reward_adapter_loads_in_peft_with_our_scores(hf_checkpoints, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rlhf_jax.export import REWARD_HEAD, SCORE_BIAS_KEY, ExportError, save_peft_reward_adapter

    folder, _ = hf_checkpoints["qwen2"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lc = LoraConfig(rank=4, alpha=8.0)
    rng = np.random.default_rng(0)
    head = {"kernel": jnp.asarray(rng.standard_normal(cfg.hidden_size) / 6, jnp.float32), "bias": jnp.float32(0.7)}
    rm = RewardModel(Adapter(random_lora(cfg, lc, seed=1), lc), head, gain=2.5, bias=-0.3)
    out = save_peft_reward_adapter(str(tmp_path / "adapter"), cfg, rm, base_model_name_or_path=folder)
    meta = json.load(open(os.path.join(out, "adapter_config.json")))
    assert meta["task_type"] == "SEQ_CLS" and meta["modules_to_save"] == ["score"]
    bias = json.load(open(os.path.join(out, REWARD_HEAD)))[SCORE_BIAS_KEY]
    assert bias == pytest.approx(2.5 * 0.7 - 0.3)

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).float().eval()
    model = PeftModel.from_pretrained(model, out).eval()
    (left_t, left_m), (right_t, right_m) = _batches()
    left_t[1, -1] = 5  # no final pad-id token here: our trained reward models read the last real token
    right_t[1, right_m[1].sum() - 1] = 5
    ours = np.asarray(reward_scores(cfg, rm, base, jnp.asarray(left_t), jnp.asarray(left_m)))
    with torch.no_grad():
        hf = model(input_ids=torch.tensor(right_t, dtype=torch.long),
                   attention_mask=torch.tensor(right_m, dtype=torch.long)).logits.numpy()[:, 0]
    assert np.std(ours) > 0.1
    np.testing.assert_allclose(hf + bias, ours, atol=1e-4)
    with pytest.raises(ExportError, match="trained with LoRA"):
        save_peft_reward_adapter(str(tmp_path / "none"), cfg, rm._replace(model=None))


def test_exported_reward_folder_reads_back_as_a_classifier(hf_checkpoints, tmp_path):
    from rlhf_jax.export import save_hf_reward_model

    folder, _ = hf_checkpoints["llama"]
    cfg, base, _ = load_pretrained(folder, tokenizer=False)
    lc = LoraConfig(rank=2, alpha=4.0)
    head = {"kernel": jnp.linspace(-1.0, 1.0, cfg.hidden_size), "bias": jnp.float32(0.2)}
    rm = RewardModel(Adapter(random_lora(cfg, lc, seed=3), lc), head, gain=1.5, bias=0.4)
    back = load_hf_classifier(save_hf_reward_model(str(tmp_path / "rm"), cfg, base, rm), base=base, base_config=cfg)
    assert not back.shared  # the adapter is merged into the body: not the base any more
    (tokens, mask), _ = _batches()
    tokens[1, -1] = 5
    ours = np.asarray(reward_scores(cfg, rm, base, jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(_ours(back, base, tokens, mask), ours, atol=1e-4)  # score_bias read back


def test_ppo_critic_starts_from_the_one_reward_model_of_a_weighted_sum():
    from rlhf_jax.model import ModelConfig
    from rlhf_jax.train.ppo.driver import reward_model_of

    cfg = ModelConfig(vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, pad_token_id=0)
    rm = RewardModel(None, {"kernel": jnp.ones(8), "bias": jnp.float32(1.0)}, gain=2.0, bias=-1.0)
    model = ModelScorer(cfg, rm)
    fn = FunctionScorer(lambda p, c: [0.0] * len(c), name="zero")
    assert reward_model_of(model) == (rm, model)
    got, part = reward_model_of(WeightedScorer([(fn, 1.0), (model, 0.5)]))
    # score = 0.5 * (2 (h.w + 1) - 1) + f: the critic's first values are the model's share, 1 (h.w + 1) - 0.5
    assert part is model and (got.gain, got.bias) == (1.0, -0.5) and got.head is rm.head
    assert reward_model_of(fn) == (None, None)
    assert reward_model_of(WeightedScorer([(model, 1.0), (ModelScorer(cfg, rm, name="other"), 1.0)])) == (None, None)
