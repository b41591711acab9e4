"""Our DPO / IPO step's loss and metrics against TRL 1.12's own ``DPOTrainer.compute_loss`` on the
same two checkpoints (a policy and a different reference: random Llamas built with PyTorch
``transformers``) and the same token ids (TRL's tokenisation of the pairs, EOS appended by TRL).
Ours: the policy as a full tree, the reference as the base, each prompt computed once."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from rlhf_jax.model import load_pretrained  # noqa: E402
from rlhf_jax.train import DPOConfig  # noqa: E402
from rlhf_jax.train.dpo import DPOBatch, dpo_batch_loss, layout_pairs  # noqa: E402
from tests.trainer_fixtures import tiny_tokenizer  # noqa: E402

ROWS = [{"prompt": "w1 w2 w3", "chosen": " w4 w5", "rejected": " w6"},
        {"prompt": "w7", "chosen": " w8 w9 w10", "rejected": " w11 w12"},
        {"prompt": "w3 w5", "chosen": " w13", "rejected": " w14 w15 w4 w2"}]


def _checkpoint(path, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hc = LlamaConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=64, max_position_embeddings=32, tie_word_embeddings=False, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(hc).float().eval()
    with torch.no_grad():  # a sharper next-token distribution than the default init gives
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(str(path), safe_serialization=True)
    return model


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_loss_and_metrics_equal_trl_dpo_trainer(tmp_path, loss):
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    tok = tiny_tokenizer()
    policy, reference = _checkpoint(tmp_path / "policy", 0), _checkpoint(tmp_path / "ref", 1)
    beta = 0.5
    args = TRLConfig(output_dir=str(tmp_path / "trl"), loss_type=[loss], beta=beta, per_device_train_batch_size=3,
                     max_length=None, use_cpu=True, report_to="none", bf16=False, save_strategy="no",
                     disable_tqdm=True, dataloader_num_workers=0)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(ROWS),
                         processing_class=tok)
    examples = [trainer.train_dataset[i] for i in range(len(ROWS))]
    assert all(e["chosen_ids"][-1] == tok.eos_token_id for e in examples)  # TRL appended the EOS
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples)).item()
    mode = "train" if trainer.model.training else "eval"  # where TRL logged this call's metrics
    trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}

    mc, policy_params, _ = load_pretrained(str(tmp_path / "policy"), tokenizer=False)
    _, ref_params, _ = load_pretrained(str(tmp_path / "ref"), tokenizer=False)
    arrays, counts = layout_pairs(examples, pad_id=0, bos_id=None, eos_id=None, max_prompt_length=16,
                                  max_completion_length=16)
    assert counts["truncated"] == 0 and not counts["skipped"]
    config = DPOConfig(loss=loss, beta=beta)
    ours, metrics = jax.jit(lambda p, b, batch: dpo_batch_loss(mc, config, p, b, batch))(
        policy_params, ref_params, DPOBatch(**arrays))
    assert abs(trl_loss) > 1e-3  # the two checkpoints differ: not the trivial log 2 / (1/(2 beta))^2
    np.testing.assert_allclose(float(ours), trl_loss, rtol=1e-4, atol=1e-5)
    pairs = {"rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
             "rewards/accuracies": "accuracy", "rewards/margins": "margin", "logps/chosen": "logps_chosen",
             "logps/rejected": "logps_rejected"}
    for theirs, name in pairs.items():
        np.testing.assert_allclose(float(metrics[name]), trl_metrics[theirs], rtol=1e-4, atol=1e-4, err_msg=name)
