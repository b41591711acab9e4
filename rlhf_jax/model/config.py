"""Model configuration: one frozen dataclass for the Llama family (incl. Qwen2) and GPT-2."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

ARCHS = ("llama", "gpt2")
ATTENTION = ("auto", "xla", "cudnn", "chunked")
# ``remat`` values besides "none" / "block": the jax.checkpoint_policies that take no argument
REMAT_POLICIES = ("dots_saveable", "dots_with_no_batch_dims_saveable", "checkpoint_dots",
                  "checkpoint_dots_with_no_batch_dims", "nothing_saveable", "everything_saveable")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama-3-style rotary frequency scaling (``rope_type: llama3`` in Hugging Face configs)."""

    factor: float
    """Divides the low frequencies."""
    low_freq_factor: float = 1.0
    """Wavelengths above ``original_max_position_embeddings / low_freq_factor`` are scaled."""
    high_freq_factor: float = 4.0
    """Wavelengths below ``original_max_position_embeddings / high_freq_factor`` are kept."""
    original_max_position_embeddings: int = 8192
    """The context length the base frequencies were trained for."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A decoder-only transformer. ``arch`` picks the block: ``llama`` (RMSNorm, rotary, SwiGLU,
    grouped-query attention, optional q/k/v bias as in Qwen2) or ``gpt2`` (LayerNorm, learned
    positions, GELU MLP, fused qkv with bias)."""

    arch: str = "llama"
    """``"llama"`` or ``"gpt2"``."""
    vocab_size: int
    """V, rows of the embedding and columns of the LM head."""
    hidden_size: int
    """D, the residual width."""
    num_layers: int
    """Number of transformer blocks."""
    num_heads: int
    """N, query heads."""
    num_kv_heads: int | None = None
    """K, key/value heads (grouped-query attention); ``None`` means ``num_heads``."""
    head_dim: int | None = None
    """H, per-head width; ``None`` means ``hidden_size // num_heads``."""
    intermediate_size: int | None = None
    """MLP inner width; ``None`` means ``4 * hidden_size``."""
    max_position_embeddings: int = 2048
    """Longest sequence (prompt + completion) the model accepts."""
    rope_theta: float = 10000.0
    """Rotary base wavelength (llama only)."""
    rope_scaling: RopeScaling | None = None
    """Optional Llama-3 frequency scaling (llama only)."""
    norm_eps: float = 1e-6
    """Epsilon of RMSNorm / LayerNorm."""
    qkv_bias: bool = False
    """Bias on the q/k/v projections (Qwen2; always on for GPT-2)."""
    o_bias: bool = False
    """Bias on the attention output projection (always on for GPT-2)."""
    mlp_bias: bool = False
    """Bias on the MLP projections (always on for GPT-2)."""
    activation: str = "silu"
    """MLP activation: ``silu`` (SwiGLU gate), ``gelu_new``/``gelu_pytorch_tanh`` (tanh GELU) or
    ``gelu`` (exact)."""
    tie_word_embeddings: bool = False
    """The LM head reuses the embedding matrix."""
    dtype: str = "float32"
    """Parameter dtype (``float32``, ``bfloat16`` or ``float16``): what ``init`` and
    ``load_pretrained`` produce; also the compute dtype unless ``compute_dtype`` is set. Softmax,
    norms' statistics, logits and everything downstream stay float32."""
    compute_dtype: str | None = None
    """Dtype of the activations and matmul inputs; ``None``: ``dtype``. Mixed precision for full
    fine-tuning: ``dtype="float32"`` (master weights; the optimizer state follows them) with
    ``compute_dtype="bfloat16"`` (weights are cast per block inside the layer scan)."""
    scan_layers: bool = True
    """Run the blocks as one ``lax.scan`` over their stacked parameters, so HLO size and compile
    time do not grow with depth. ``False`` unrolls the same loop (same parameter layout, one copy
    of the block per layer in the program)."""
    remat: str = "none"
    """Rematerialisation of each block in the backward pass: ``"none"`` (keep every activation),
    ``"block"`` (keep each block's input only, recompute the rest), or the name of a
    ``jax.checkpoint_policies`` policy that takes no argument (e.g. ``"dots_saveable"``:
    keep matmul outputs, recompute the element-wise ops)."""
    attention: str = "auto"
    """Attention kernel: ``"xla"`` (``jax.nn.dot_product_attention`` lowered by XLA: the
    ``[B, N, T, S]`` scores are materialised), ``"cudnn"`` (cuDNN flash attention; GPU, bf16/fp16),
    ``"chunked"`` (queries in blocks of ``attention_chunk``, each block rematerialised: only one
    block's scores live, forward and backward), or ``"auto"``: cuDNN on a GPU when the compute
    dtype is 16-bit, else ``"chunked"`` when the queries outnumber ``attention_chunk``, else XLA."""
    attention_chunk: int = 512
    """Query block of ``attention="chunked"`` (and the length above which ``"auto"`` chunks)."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token, if any."""
    eos_token_id: int | tuple[int, ...] | None = None
    """End-of-sequence token(s) that stop generation."""
    pad_token_id: int | None = None
    """Padding token id."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        for name in ("dtype", "compute_dtype"):
            value = getattr(self, name)
            if value not in ("float32", "bfloat16", "float16") and not (name == "compute_dtype" and value is None):
                raise ValueError(f"ModelConfig.{name} must be float32/bfloat16/float16, got {value!r}")
        if self.remat not in ("none", "block") + REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat must be 'none', 'block' or one of {REMAT_POLICIES}, "
                             f"got {self.remat!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"ModelConfig.attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.attention_chunk < 1:
            raise ValueError(f"ModelConfig.attention_chunk must be >= 1, got {self.attention_chunk}")

    @property
    def jnp_dtype(self):
        """The parameter dtype."""
        return jnp.dtype(self.dtype)

    @property
    def compute_jnp_dtype(self):
        """The activation / matmul dtype (``compute_dtype``, else ``dtype``)."""
        return jnp.dtype(self.compute_dtype or self.dtype)

    @property
    def remat_policy(self):
        """``None`` (no remat) or the ``jax.checkpoint`` policy of ``remat``."""
        if self.remat == "none":
            return None
        name = "nothing_saveable" if self.remat == "block" else self.remat
        return getattr(jax.checkpoint_policies, name)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count of the base model (no heads, no adapters)."""
        d, h, n, k, f, v = (self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads,
                            self.intermediate_size, self.vocab_size)
        if self.arch == "gpt2":
            layer = d * 3 * d + 3 * d + d * d + d + 2 * d * f + f + d + 4 * d
            return v * d + self.max_position_embeddings * d + self.num_layers * layer + 2 * d
        attn = d * n * h + 2 * d * k * h + n * h * d
        attn += (n * h + 2 * k * h) * self.qkv_bias + d * self.o_bias
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        head = 0 if self.tie_word_embeddings else d * v
        return v * d + self.num_layers * (attn + mlp + 2 * d) + d + head
