"""PPO's data input on a chat model: conversational prompts are rendered with the template's
generation prompt, a rollout stops at ``<|im_end|>`` (the template's end of turn) while standard
prompts stop at EOS only, and a `transformers` sequence classifier on the same base scores the
rollout's tokens as `transformers` does (the critic starting from it on the shared base)."""

import numpy as np
import pytest

from rlhf_jax.lora import Adapter, LoraConfig
from rlhf_jax.model import load_pretrained
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.scoring import HFClassifierScorer, load_hf_classifier
from rlhf_jax.train import FitContext, PPOConfig, prepare_ppo
from tests.chat_fixtures import EXAMPLES
from tests.own_data_fixtures import chat_model_folder, classifier_folder
from tests.test_export_utils import torch_forward

torch = pytest.importorskip("torch")


def _rows(ro):
    """Each rollout row's real response tokens."""
    return [r[m > 0].tolist() for r, m in zip(np.asarray(ro.response_tokens), np.asarray(ro.response_mask))]


def test_rollouts_stop_at_the_end_of_turn_and_score_as_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = chat_model_folder(tmp_path / "model")
    cls = classifier_folder(model, tmp_path / "cls")
    cfg, base, tok = load_pretrained(model)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    classifier = load_hf_classifier(cls, base=base, base_config=cfg)
    assert classifier.shared  # the classifier's body is the policy's base: no second copy
    lora = LoraConfig(rank=2, alpha=4.0)
    config = PPOConfig(batch_size=6, mini_batch_size=6, policy_lora=lora, critic_lora=lora,
                       sampling=SamplingConfig(max_new_tokens=8))
    chats = EXAMPLES["conversational_prompt_only"] * 2
    run = prepare_ppo(cfg, base, tok, chats, HFClassifierScorer(classifier), config)
    assert run.sampler.config.eos_ids == (0, end) and run.report.format == "conversational_prompt_only"
    prompt = tok.apply_chat_template(chats[0]["prompt"], tokenize=False, add_generation_prompt=True)
    mask0 = np.asarray(run.prompts.batch.mask[0]) > 0
    assert np.asarray(run.prompts.batch.tokens[0])[mask0].tolist() == tok(prompt, add_special_tokens=False)["input_ids"]
    assert isinstance(run.state.params["critic"]["model"], Adapter)  # critic_init="reward" on a shared-base head

    batch, _ = run.batches(0, FitContext(run.state, base, None))
    rows = _rows(batch.rollout)
    assert any(end in r for r in rows)
    for r in rows:  # generation ends at the first end-of-turn token
        assert end not in r[:-1] and 0 not in r[:-1]
    # the scores are transformers' logits on the same tokens (left padded: positions from the mask)
    hf = AutoModelForSequenceClassification.from_pretrained(cls).float().eval()
    ro = batch.rollout
    logits = torch_forward(hf, np.asarray(ro.tokens), np.asarray(ro.attention_mask)).logits.numpy()[:, 0]
    np.testing.assert_allclose(np.asarray(batch.scores), logits, atol=1e-4)

    # standard prompts: no template, so <|im_end|> is an ordinary token and generation goes on
    texts = [{"prompt": f"The {t} is"} for t in ("sky", "grass", "sun", "sea", "tree", "sand")]
    plain = prepare_ppo(cfg, base, AutoTokenizer.from_pretrained(model), texts, lambda p, c: [0.0] * len(c),
                        PPOConfig(batch_size=6, mini_batch_size=6, policy_lora=lora, critic_lora=lora,
                                  critic_init="zero", sampling=SamplingConfig(max_new_tokens=8)))
    assert plain.sampler.config.eos_ids == (0,)
    rows = _rows(plain.batches(0, FitContext(plain.state, base, None))[0].rollout)
    assert any(end in r[:-1] for r in rows)


def test_grpo_reads_conversational_prompts_through_the_template(tmp_path):
    """GRPO takes its prompts the way PPO does: the chat template's generation prompt, stop at
    ``<|im_end|>``, the reward functions get the conversation (message lists) itself."""
    from rlhf_jax.train import GRPOConfig, prepare_grpo

    model = chat_model_folder(tmp_path / "model")
    cfg, base, tok = load_pretrained(model)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    chats = EXAMPLES["conversational_prompt_only"] * 2
    seen = []

    def reward(prompts, completions):
        seen.extend(prompts)
        return [float(len(c)) for c in completions]

    run = prepare_grpo(cfg, base, tok, chats, reward, GRPOConfig(
        batch_size=2, group_size=2, policy_lora=LoraConfig(rank=2, alpha=4.0), sampling=SamplingConfig(max_new_tokens=8)))
    assert run.sampling.eos_ids == (0, end) and run.report.format == "conversational_prompt_only"
    prompt = tok.apply_chat_template(chats[0]["prompt"], tokenize=False, add_generation_prompt=True)
    mask0 = np.asarray(run.prompts.batch.mask[0]) > 0
    assert np.asarray(run.prompts.batch.tokens[0])[mask0].tolist() == tok(prompt, add_special_tokens=False)["input_ids"]
    batch, _ = run.batches(0, FitContext(run.state, base, None))
    for r in _rows(batch.rollout):
        assert end not in r[:-1] and 0 not in r[:-1]
    assert len(seen) == 4 and all(isinstance(p, list) and p[0]["role"] for p in seen)
