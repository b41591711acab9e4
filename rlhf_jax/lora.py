"""LoRA as a separate pytree over frozen base weights.

The adapter lives in its own Flax variable collection, ``"lora"``; its tree mirrors the base
parameter tree: for every adapted dense layer at ``path`` the base holds ``path/kernel [Din, Dout]``
and the adapter holds ``path/a [Din, R]`` and ``path/b [R, Dout]``, with the blocks stacked on a
leading layer axis like the base (``layers/attn/q_proj/a`` is ``[L, Din, R]``). The adapted layer
computes

    y = x W + (alpha / R) * dropout(x) A B          (Hu et al. 2021, "LoRA")

with ``B = 0`` at init, so the adapted model equals the base exactly. Passing the ``lora``
collection to ``model.apply`` turns the adapter on; leaving it out gives the base (the reference
model in PPO). Optimizer state is built over the adapter tree alone.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.config_checks import ConfigError, at_least, check, in_range, one_of, positive

PyTree = Any
LAYERS = "layers"
"""Name of the stacked blocks in the parameter tree: every leaf under it has a leading layer axis."""

ALL_LINEAR = (
    # Llama family
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    # GPT-2 (fused qkv, attention output, MLP in/out)
    "c_attn", "c_proj", "c_fc",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Which dense layers get an adapter, and how it is shaped and initialised."""

    rank: int = 8
    """R, the inner dimension of the low-rank update ``A B``."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha / rank``."""
    targets: tuple[str, ...] = ALL_LINEAR
    """Regular expressions matched against each dense layer's per-layer path
    (``layers_0/attn/q_proj``; see :meth:`layer_selection`); a layer is adapted when any pattern
    matches the end of its path. GPT-2's attention output alone is ``"attn/c_proj"``; one layer
    alone is ``"layers_3/attn/q_proj"``. The adapter tree is stacked over all layers either way;
    the rows of unselected layers stay zero."""
    dropout: float = 0.0
    """Dropout on the adapter's input, active only when ``deterministic=False`` (needs a
    ``"dropout"`` rng)."""
    init: str = "kaiming"
    """Init of ``A``: ``"kaiming"`` (uniform, bound sqrt(1/Din) * sqrt(3), as PEFT) or
    ``"gaussian"`` (normal with std 1/R). ``B`` is always zero."""

    def __post_init__(self):
        at_least(self, "rank", 1, integer=True)
        positive(self, "alpha")
        in_range(self, "dropout", 0, 1, high_open=True)
        one_of(self, "init", ("kaiming", "gaussian"))
        check(self, "targets", isinstance(self.targets, tuple) and len(self.targets) > 0,
              "a non-empty tuple of regular expressions")
        for i, pattern in enumerate(self.targets):
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"LoraConfig.targets[{i}] must be a non-empty string, got {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"LoraConfig.targets[{i}] must be a regular expression, got {pattern!r} "
                                  f"({e})") from None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def matches(self, path: str) -> bool:
        """Whether the dense layer at ``path`` (names joined by ``/``) is adapted."""
        return any(re.search(rf"(^|/){t}$", path) for t in self.targets)

    def layer_selection(self, path: str, num_layers: int) -> tuple[bool, ...]:
        """Which layers of the stacked dense layer at ``path`` (``layers/attn/q_proj``) are
        adapted: layer ``i`` when a target matches ``layers_{i}/attn/q_proj`` (the per-layer name,
        e.g. ``"layers_1/attn/q_proj"`` selects one layer) or the stacked path itself. A path
        outside the layer stack gives one entry."""
        head, _, rest = path.partition("/")
        if head != LAYERS or not rest:
            return (self.matches(path),)
        if self.matches(path):
            return (True,) * num_layers
        return tuple(self.matches(f"{LAYERS}_{i}/{rest}") for i in range(num_layers))

    def init_a(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """``A [..., Din, R]`` (leading axes: the layer axis). Drawn flat and reshaped (XLA:CPU
        compiles the random-bits kernel of a 1-D shape several times faster)."""
        d_in, rank = shape[-2:]
        n = int(np.prod(shape))
        if self.init == "kaiming":
            bound = float(np.sqrt(3.0 / d_in))
            return jax.random.uniform(key, (n,), jnp.float32, -bound, bound).reshape(shape)
        return (jax.random.normal(key, (n,), jnp.float32) / rank).reshape(shape)


def init_lora(model, key: jax.Array, *, example_tokens: jax.Array | None = None) -> PyTree:
    """A fresh adapter tree for ``model`` (a module built with ``lora=LoraConfig(...)``).

    Shapes come from ``jax.eval_shape`` of the model's init, so no base weights are allocated.
    ``A`` is random (per-leaf keys folded from ``key``), ``B`` zero; leaves are stacked on the
    layer axis (``a [L, Din, R]``, ``b [L, R, Dout]``) and the rows of layers the targets do not
    select (:meth:`LoraConfig.layer_selection`) are zero.
    """
    if getattr(model, "lora", None) is None:
        raise ValueError("init_lora: the model was built without a LoraConfig (model.lora is None)")
    tokens = jnp.zeros((1, 1), jnp.int32) if example_tokens is None else example_tokens
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
    if "lora" not in shapes:
        raise ValueError(f"init_lora: no layer matches LoRA targets {model.lora.targets}")
    flat = jax.tree_util.tree_flatten_with_path(shapes["lora"])[0]
    leaves = {}
    for i, (path, leaf) in enumerate(flat):
        names = tuple(p.key for p in path)
        if names[-1] == "a":
            a = model.lora.init_a(jax.random.fold_in(key, i), leaf.shape)
            keep = layer_mask(model.lora, names[:-1], leaf.shape)
            leaves[names] = a if keep is None else a * keep[:, None, None]
        else:
            leaves[names] = jnp.zeros(leaf.shape, jnp.float32)
    return _unflatten(leaves)


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for names, value in flat.items():
        node = tree
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = value
    return tree


def _flatten(tree: PyTree, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def layer_mask(config: LoraConfig, layer: tuple[str, ...], shape: tuple[int, ...]) -> jax.Array | None:
    """float32 ``[L]``, 1 for the layers of the stacked dense layer ``layer`` that ``config``
    selects, 0 for the others; ``None`` when every layer is selected (or the leaf is not stacked)."""
    if not layer or layer[0] != LAYERS:
        return None
    sel = config.layer_selection("/".join(layer), shape[0])
    return None if all(sel) else jnp.asarray(sel, jnp.float32)


def adapted_layers(lora: PyTree) -> list[tuple[str, ...]]:
    """Paths of the dense layers that carry an adapter (stacked: ``("layers", "attn", "q_proj")``
    holds every layer's)."""
    return sorted({names[:-1] for names in _flatten(lora)})


def merge_lora(base: PyTree, lora: PyTree, *, scale: float) -> PyTree:
    """Fold the adapter into the base: ``W <- W + scale * A B`` layer by layer (computed in
    float32, cast back to W's dtype; only one layer's float32 product exists at a time). Returns a
    new base tree; the inputs are untouched. Rows of unselected layers are zero (as
    :func:`init_lora`, :func:`rlhf_jax.export.load_peft_adapter` and training keep them), so they
    change nothing."""
    flat_base = _flatten(base)
    flat_lora = _flatten(lora)
    merged = dict(flat_base)
    for layer in adapted_layers(lora):
        kpath = layer + ("kernel",)
        if kpath not in flat_base:
            raise KeyError(f"merge_lora: adapter layer {'/'.join(layer)} has no base kernel")
        w = flat_base[kpath]
        if hasattr(w, "dequantize"):
            raise ValueError(f"merge_lora: the base kernel {'/'.join(kpath)} is quantised; merge into a float base "
                             "(rlhf_jax.model.dequantize_base(base, dtype)), or keep the adapter separate")
        a, b = flat_lora[layer + ("a",)], flat_lora[layer + ("b",)]
        if a.shape[:-1] != w.shape[:-1] or b.shape[-1] != w.shape[-1] or a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"merge_lora: adapter {'/'.join(layer)} has A {a.shape}, B {b.shape} but the "
                f"base kernel is {w.shape}")

        def one(wab, w=w):
            wl, al, bl = wab
            delta = jnp.asarray(al, jnp.float32) @ jnp.asarray(bl, jnp.float32)
            return (jnp.asarray(wl, jnp.float32) + scale * delta).astype(w.dtype)

        merged[kpath] = jax.lax.map(one, (w, a, b)) if w.ndim == 3 else one((w, a, b))
    return _unflatten(merged)


def split_lora(merged: PyTree, base: PyTree, *, rank: int, alpha: float) -> PyTree:
    """The reverse of :func:`merge_lora`: recover a rank-``rank`` adapter from a merged tree and
    its base by a truncated SVD of each layer's kernel difference (exact when the difference has
    rank <= ``rank``). A dense layer whose kernels are unchanged in every layer gets no adapter;
    within a stacked one, an unchanged layer gets zero rows."""
    scale = alpha / rank
    flat_m, flat_b = _flatten(merged), _flatten(base)
    out = {}

    def one(diff):
        u, s, vt = np.linalg.svd(diff, full_matrices=False)
        root = np.sqrt(s[:rank] / scale)
        a, b = np.zeros((diff.shape[0], rank)), np.zeros((rank, diff.shape[1]))
        k = root.shape[0]
        a[:, :k], b[:k] = u[:, :rank] * root, root[:, None] * vt[:rank]
        return a, b

    for path, w in flat_m.items():
        if path[-1] != "kernel":
            continue
        diff = np.asarray(w, np.float64) - np.asarray(flat_b[path], np.float64)
        if not np.any(diff):
            continue
        stacked = diff if diff.ndim == 3 else diff[None]
        pairs = [one(d) if np.any(d) else (np.zeros((d.shape[0], rank)), np.zeros((rank, d.shape[1])))
                 for d in stacked]
        a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        out[path[:-1] + ("a",)] = jnp.asarray(a if diff.ndim == 3 else a[0], jnp.float32)
        out[path[:-1] + ("b",)] = jnp.asarray(b if diff.ndim == 3 else b[0], jnp.float32)
    return _unflatten(out)


def stack_adapters(adapters) -> tuple[PyTree | None, LoraConfig | None]:
    """One adapter tree for a pass over ``G`` equal row groups of a batch, group ``g`` using
    ``adapters[g] = (tree, config)`` (``(None, None)``: the base alone, e.g. PPO's reference).

    Every leaf gets a group axis after the layer axis: ``a [L, G, Din, R]``, ``b [L, G, R,
    Dout]``. Ranks are zero-padded to the largest (exact: padded columns of ``A`` meet padded rows
    of ``B``, both zero, and stay zero under gradient descent), each group's ``alpha / R`` is
    folded into its ``B`` (the returned config has scale 1), and a layer that a group does not
    adapt gets zeros (whole dense layers, and the unselected layers of a stacked one). Pure and
    differentiable: gradients reach each group's own adapter. Pass the result as the ``"lora"``
    collection of a model built with the returned config; the batch's rows must be group-major
    (``[G * b, T]``). Stacked passes carry no adapter dropout (PPO's passes are deterministic).
    Returns ``(None, None)`` when no group has an adapter.
    """
    used = [(t, c) for t, c in adapters if t is not None]
    if not used:
        return None, None
    if any(c is None for _, c in used):
        raise ValueError("stack_adapters: every adapter tree needs its LoraConfig")
    rank = max(c.rank for _, c in used)
    flats = [None if t is None else _flatten(t) for t, _ in adapters]
    layers = sorted(set().union(*(adapted_layers(t) for t, _ in used)))
    out = {}
    for layer in layers:
        ref = next(f for f in flats if f is not None and layer + ("a",) in f)
        a_ref, b_ref = ref[layer + ("a",)], ref[layer + ("b",)]
        lead, d_in, d_out = a_ref.shape[:-2], a_ref.shape[-2], b_ref.shape[-1]
        a_rows, b_rows = [], []
        for f, (_, c) in zip(flats, adapters):
            if f is None or layer + ("a",) not in f:
                a_rows.append(jnp.zeros(lead + (d_in, rank), jnp.float32))
                b_rows.append(jnp.zeros(lead + (rank, d_out), jnp.float32))
                continue
            a, b = jnp.asarray(f[layer + ("a",)], jnp.float32), jnp.asarray(f[layer + ("b",)], jnp.float32)
            keep = layer_mask(c, layer, a.shape)
            if keep is not None:
                a = a * keep[:, None, None]
            pad = [(0, 0)] * len(lead)
            a_rows.append(jnp.pad(a, pad + [(0, 0), (0, rank - a.shape[-1])]))
            b_rows.append(jnp.pad(b * c.scale, pad + [(0, rank - a.shape[-1]), (0, 0)]))
        out[layer + ("a",)] = jnp.stack(a_rows, axis=len(lead))
        out[layer + ("b",)] = jnp.stack(b_rows, axis=len(lead))
    targets = tuple(dict.fromkeys(t for _, c in used for t in c.targets))
    return _unflatten(out), LoraConfig(rank=rank, alpha=float(rank), targets=targets)


def tree_size(tree: PyTree) -> tuple[int, int]:
    """(number of parameters, bytes) of every array leaf in ``tree``."""
    leaves = jax.tree_util.tree_leaves(tree)
    return (sum(int(np.prod(x.shape)) for x in leaves),
            sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves))


@flax.struct.dataclass
class Adapter:
    """A trainable LoRA adapter: the ``"lora"`` tree plus its :class:`LoraConfig` as static data.

    A pytree whose only leaves are the adapter's arrays (the config rides along in the tree
    structure, so a jitted step knows at trace time which layers are adapted, with which scale,
    and optimizer state, sharding and checkpoints see just the arrays). Anywhere a trainable model
    tree is expected (``state.params["policy"]``, a reward model's or critic's ``"model"``), it is
    either an :class:`Adapter` over the shared frozen base or a plain parameter tree (full
    fine-tuning); :func:`model_variables` and :func:`lora_config_of` are the one place that tells
    the two apart.
    """

    tree: PyTree
    """``{"layers": {"attn": {"q_proj": {"a": [L, Din, R], "b": [L, R, Dout]}}}, ...}`` (stacked over layers)."""
    config: LoraConfig = flax.struct.field(pytree_node=False)
    """Which layers, rank, alpha (scale), dropout."""

    @property
    def scale(self) -> float:
        return self.config.scale


def lora_config_of(trainable: PyTree | None) -> LoraConfig | None:
    """The adapter's config when ``trainable`` is an :class:`Adapter`, else ``None`` (a full tree,
    or no model at all)."""
    return trainable.config if isinstance(trainable, Adapter) else None


def model_variables(base: PyTree | None, trainable: PyTree | None) -> dict:
    """The variables for ``Transformer(model_config, lora=lora_config_of(trainable)).apply``:

    - ``trainable`` an :class:`Adapter`: ``{"params": base, "lora": trainable.tree}``;
    - ``trainable`` a full parameter tree: ``{"params": trainable}`` (``base`` unused);
    - ``trainable=None``: the base alone, ``{"params": base}`` (the reference model).
    """
    if trainable is None:
        if base is None:
            raise ValueError("model_variables: neither a base nor a trainable tree was given")
        return {"params": base}
    if isinstance(trainable, Adapter):
        if base is None:
            raise ValueError("model_variables: an Adapter needs the base it adapts")
        _check_adapter_modules(base, trainable.tree)
        return {"params": base, "lora": trainable.tree}
    return {"params": trainable}


_LAYER_KEY = re.compile(rf"{LAYERS}_(\d+)")


def _check_adapter_modules(base: PyTree, tree: PyTree) -> None:
    """An adapter whose modules are not the base's would be ignored by ``apply`` (an unused
    variable collection): the model would silently run as the bare base. Fail instead."""
    if not hasattr(base, "keys") or not hasattr(tree, "keys"):
        return
    stray = sorted(set(tree) - set(base))
    if stray:
        hint = (" (per-layer modules: a tree saved before the blocks were stacked; load it with "
                "rlhf_jax.lora.stack_layer_modules(tree))" if any(_LAYER_KEY.fullmatch(k) for k in stray) else "")
        raise ValueError(f"adapter modules {stray[:4]} are not in the base (its modules: {sorted(base)}){hint}")


def stack_layer_modules(tree: PyTree) -> PyTree:
    """A tree with one subtree per block (``layers_0``, ``layers_1``...: the layout files written
    before the blocks were stacked) with those subtrees stacked into ``layers`` on a leading layer
    axis, the layout the model takes; any other tree is returned as it is. Raises when the blocks
    are not numbered 0..L-1 or their subtrees differ in structure or shape."""
    if not hasattr(tree, "keys"):
        return tree
    blocks = {int(m.group(1)): k for k in tree if (m := _LAYER_KEY.fullmatch(k))}
    if not blocks:
        return tree
    if LAYERS in tree or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"per-layer modules {sorted(blocks.values())[:4]}... cannot be stacked: expected "
                         f"{LAYERS}_0..{LAYERS}_{len(blocks) - 1} and no {LAYERS!r} subtree")
    subtrees = [tree[blocks[i]] for i in range(len(blocks))]
    try:
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *subtrees)
    except (ValueError, TypeError) as e:
        raise ValueError(f"per-layer modules differ in structure or shape, cannot be stacked: {e}") from None
    return {**{k: v for k, v in tree.items() if k not in blocks.values()}, LAYERS: stacked}


def outer_params(base: PyTree | None, trainable: PyTree | None) -> PyTree:
    """The parameter tree that holds the embedding and the LM head of ``base`` + ``trainable``:
    ``trainable`` itself when it is a full tree, else ``base`` (an adapter only touches dense
    layers)."""
    return trainable if trainable is not None and not isinstance(trainable, Adapter) else base


def merged_params(base: PyTree, trainable: PyTree | None) -> PyTree:
    """The full parameter tree of ``base`` + ``trainable``: the adapter merged in
    (:func:`merge_lora`), a full tree itself, or ``base`` when ``trainable`` is ``None``."""
    if trainable is None:
        return base
    if isinstance(trainable, Adapter):
        return merge_lora(base, trainable.tree, scale=trainable.scale)
    return trainable
