"""Parameter memory of a PPO run: one frozen base + adapters (rlhf_jax) against four full models
(policy, reference, critic, reward; the usual peer layout), with Adam state for what trains.

Shapes only (``jax.eval_shape``): nothing is allocated, so it runs for 0.5B-8B configs on a laptop.
Activations and the KV cache are not counted (they are the same in both layouts).

    python experiments/memory_table.py
"""

import jax
import jax.numpy as jnp

from rlhf_jax.lora import LoraConfig, tree_size
from rlhf_jax.model import ModelConfig, Transformer

CONFIGS = {
    "demo (width 64, 2 layers)": ModelConfig(vocab_size=410, hidden_size=64, num_layers=2, num_heads=4,
                                            num_kv_heads=2, intermediate_size=128, max_position_embeddings=48),
    "Qwen2-0.5B shape, bf16": ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                                          num_kv_heads=2, intermediate_size=4864, qkv_bias=True,
                                          tie_word_embeddings=True, dtype="bfloat16"),
    "Llama-3.2-1B shape, bf16": ModelConfig(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32,
                                            num_kv_heads=8, intermediate_size=8192, tie_word_embeddings=True,
                                            dtype="bfloat16"),
}


def bytes_of(config: ModelConfig, lora: LoraConfig | None = None) -> tuple[int, int]:
    shapes = jax.eval_shape(Transformer(config, lora=lora).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    return tree_size(shapes["params"])[1], tree_size(shapes.get("lora", {}))[1]


def main():
    lora = LoraConfig(rank=16, alpha=32.0)
    print("| model | one base | 3 adapters + 2 heads + Adam (policy, critic) | rlhf_jax total | "
          "4 full models + Adam (policy, critic) | ratio |")
    print("|---|---|---|---|---|---|")
    for name, cfg in CONFIGS.items():
        base, adapter = bytes_of(cfg, lora)
        head = 4 * (cfg.hidden_size + 1)
        ours_extra = 3 * adapter + 2 * head + 2 * 2 * (adapter + head) * 2  # Adam m, v in float32
        ours = base + ours_extra
        adam_full = 2 * 2 * base * (4 // jnp.dtype(cfg.dtype).itemsize)  # m, v in float32 for 2 models
        peers = 4 * base + adam_full
        mib = lambda b: f"{b / 2**20:,.1f} MiB"
        print(f"| {name} | {mib(base)} | {mib(ours_extra)} | {mib(ours)} | {mib(peers)} | {peers / ours:.1f}x |")


if __name__ == "__main__":
    main()
