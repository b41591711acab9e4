"""Partition rules by parameter path (no devices needed: specs are checked against axis sizes),
MeshConfig, and placement on a one-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from rlhf_jax.lora import LoraConfig
from rlhf_jax.model import ModelConfig, Transformer, init_head
from rlhf_jax.sharding import (MeshConfig, default_rules, fit_spec, jit_step, make_mesh, param_shardings, param_specs,
                               path_string, process_rows, shard_batch, shard_params, spec_for)
from rlhf_jax.train import OptimConfig, TrainState, make_optimizer

AXES = {"data": 2, "fsdp": 2, "tensor": 2}
LLAMA = ModelConfig(vocab_size=24, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64,
                    qkv_bias=True, o_bias=True, mlp_bias=True)
GPT2 = ModelConfig(arch="gpt2", vocab_size=24, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                   max_position_embeddings=16)


def shapes(config, lora=None):
    """Abstract parameter (and adapter) trees: nothing is allocated."""
    model = Transformer(config, lora=lora)
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
    return tree["params"], tree.get("lora")


def flat_specs(tree, axes=AXES, rules=None):
    specs = param_specs(tree, axes, rules)
    return {path_string(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, P))[0]}


def test_llama_specs_by_path():
    # stacked block leaves [L, ...]: an unsharded layer axis in front of the per-layer rule
    col, row, tp = P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp"), P(None, "tensor")
    want = {
        "embed/embedding": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"), "final_norm/scale": P(),
        "layers/attn_norm/scale": P(), "layers/mlp_norm/scale": P(),
        "layers/attn/q_proj/kernel": col, "layers/attn/k_proj/kernel": col, "layers/attn/v_proj/kernel": col,
        "layers/attn/q_proj/bias": tp, "layers/attn/k_proj/bias": tp, "layers/attn/v_proj/bias": tp,
        "layers/attn/o_proj/kernel": row, "layers/attn/o_proj/bias": P(),
        "layers/mlp/gate_proj/kernel": col, "layers/mlp/up_proj/kernel": col,
        "layers/mlp/gate_proj/bias": tp, "layers/mlp/up_proj/bias": tp,
        "layers/mlp/down_proj/kernel": row, "layers/mlp/down_proj/bias": P(),
    }
    assert flat_specs(shapes(LLAMA)[0]) == want
    assert flat_specs(shapes(LLAMA)[0], rules=default_rules("llama")) == want


def test_gpt2_specs_by_path():
    col, row = P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp")
    want = {
        "embed/embedding": P("tensor", "fsdp"), "pos_embed/embedding": P(None, "fsdp"),
        "final_norm/scale": P(), "final_norm/bias": P(),
        "layers/attn_norm/scale": P(), "layers/attn_norm/bias": P(),
        "layers/mlp_norm/scale": P(), "layers/mlp_norm/bias": P(),
        "layers/attn/c_attn/kernel": col, "layers/attn/c_attn/bias": P(None, "tensor"),
        "layers/attn/c_proj/kernel": row, "layers/attn/c_proj/bias": P(),
        "layers/mlp/c_fc/kernel": col, "layers/mlp/c_fc/bias": P(None, "tensor"),
        "layers/mlp/c_proj/kernel": row, "layers/mlp/c_proj/bias": P(),
        "lm_head": P("fsdp", "tensor"),
    }
    got = flat_specs(shapes(GPT2)[0], rules=default_rules("gpt2"))
    assert got == {k: v for k, v in want.items() if k in got} and len(got) >= len(want) - 1  # lm_head: untied only


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_lora_leaves_follow_their_kernel(config):
    base, lora = shapes(config, LoraConfig(rank=4))
    kernel = flat_specs(base)
    adapter = flat_specs(lora)
    assert len(adapter) == 2 * sum(k.endswith("/kernel") for k in kernel)
    for path, spec in adapter.items():
        layer, leaf = path.rsplit("/", 1)
        k = kernel[f"{layer}/kernel"]
        # x A B has the layout of x W: A [L, Din, R] splits Din like W, B [L, R, Dout] splits Dout like W
        assert spec == (P(None, k[1], None) if leaf == "a" else P(None, None, k[2])), path
    assert adapter["layers/attn/q_proj/a" if config.arch == "llama" else "layers/attn/c_attn/a"] == P(None, "fsdp", None)


def test_quantized_kernels_follow_their_kernel():
    from rlhf_jax.model import quantize_base

    base, _ = shapes(LLAMA)
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), base)
    int8 = flat_specs(quantize_base(params, "int8"))
    assert int8["layers/attn/q_proj/kernel/q"] == P(None, "fsdp", "tensor")
    assert int8["layers/attn/q_proj/kernel/scale"] == P(None, "tensor")  # per output column
    assert int8["layers/mlp/down_proj/kernel/scale"] == P(None, "fsdp")
    nf4 = flat_specs(quantize_base(params, "nf4"))  # flat row-major codes: split like the rows
    assert nf4["layers/attn/o_proj/kernel/packed"] == nf4["layers/attn/o_proj/kernel/absmax"] == P(None, "tensor")
    assert nf4["layers/attn/q_proj/kernel/packed"] == P(None, "fsdp") and int8["lm_head"] == P("fsdp", "tensor")


def test_optimizer_state_and_nested_trees_follow_params():
    _, lora = shapes(LLAMA, LoraConfig(rank=4))
    params = {"policy": lora, "critic": {"lora": lora, "head": init_head(jax.random.PRNGKey(0), 32)}}
    opt = make_optimizer(OptimConfig(grad_accum_steps=2))
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, opt.init(p), jax.random.PRNGKey(0),
                                                jnp.zeros((), jnp.int32)), params)
    specs = param_specs(state, AXES)
    inner = specs.opt_state.inner_opt_state[1][0]  # MultiSteps(chain(clip, adamw)) -> adam's state
    assert inner.mu == specs.params and inner.nu == specs.params and specs.opt_state.acc_grads == specs.params
    assert specs.params["critic"]["lora"] == specs.params["policy"] == param_specs(lora, AXES)
    assert specs.params["critic"]["head"] == {"kernel": P(), "bias": P()}  # value head replicated
    assert specs.step == P() and inner.count == P() and specs.rng == P()
    assert path_string(jax.tree_util.tree_flatten_with_path(state)[0][1][0]).startswith("params/critic/head")


def test_not_divisible_falls_back_to_replication():
    big = {"embed": {"embedding": jax.ShapeDtypeStruct((97, 30), jnp.float32)},
           "lm_head": jax.ShapeDtypeStruct((30, 97), jnp.float32)}
    specs = flat_specs(big, {"data": 1, "fsdp": 2, "tensor": 2})
    assert specs == {"embed/embedding": P(None, "fsdp"), "lm_head": P("fsdp", None)}
    # a dimension not divisible by ALL of its axes: 6 over fsdp=4 -> replicated on that dimension
    assert fit_spec(P("fsdp", "tensor"), (6, 4), {"fsdp": 4, "tensor": 2}) == P(None, "tensor")
    assert fit_spec(P(("data", "fsdp")), (8, 3), {"data": 2, "fsdp": 2}) == P(("data", "fsdp"))
    assert fit_spec(P(("data", "fsdp")), (6,), {"data": 2, "fsdp": 2}) == P(None)
    assert fit_spec(P("fsdp", "tensor"), (), AXES) == P()  # rank mismatch (a scalar): replicated
    assert fit_spec(P("fsdp", "tensor"), (4, 4), {"fsdp": 2}) == P("fsdp", None)  # axis not in the mesh
    assert spec_for("some/unknown/leaf") == P()
    custom = [(r"kernel$", P(None, "tensor"))]
    assert flat_specs({"x": {"kernel": jax.ShapeDtypeStruct((4, 4), jnp.float32)}}, rules=custom) == {
        "x/kernel": P(None, "tensor")}


def test_mesh_config_resolve_and_parse():
    assert MeshConfig().resolve(8) == (8, 1, 1)
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 2)
    assert MeshConfig(data=2, fsdp=2, tensor=2).resolve(8) == (2, 2, 2)
    assert MeshConfig.from_string("data=2, fsdp=2,tensor=2") == MeshConfig(data=2, fsdp=2, tensor=2)
    assert MeshConfig.from_string("fsdp=4") == MeshConfig(data=-1, fsdp=4, tensor=1)
    with pytest.raises(ValueError, match="needs 8 devices"):
        MeshConfig(data=2, fsdp=2, tensor=2).resolve(4)
    with pytest.raises(ValueError, match="not divisible"):
        MeshConfig(fsdp=3).resolve(8)
    with pytest.raises(ValueError, match="at most one"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="axis=size"):
        MeshConfig.from_string("pipeline=2")


def test_one_device_mesh_places_params_and_batches():
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.shape == (1, 1, 1)
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    params = jax.jit(Transformer(LLAMA).init)(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"]
    placed = shard_params(params, mesh, dtype=jnp.bfloat16)
    q = placed["layers"]["attn"]["q_proj"]["kernel"]
    assert q.dtype == jnp.bfloat16 and q.sharding.spec == P(None, "fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(q, np.float32),
                                  np.asarray(params["layers"]["attn"]["q_proj"]["kernel"].astype(jnp.bfloat16),
                                             np.float32))
    assert param_shardings(params, mesh)["lm_head"].spec == P("fsdp", "tensor")
    batch = shard_batch({"ids": np.arange(12).reshape(6, 2), "n": np.float32(3.0), "none": None}, mesh)
    assert batch["ids"].sharding.spec == P(("data", "fsdp")) and batch["n"].sharding.spec == P()
    assert batch["none"] is None
    assert process_rows(mesh, 6) == slice(0, 6)


def test_no_mesh_is_the_identity_and_jit_step_keeps_the_layout():
    tree = {"lm_head": jnp.ones((4, 6)), "n": jnp.zeros((), jnp.int32)}
    assert shard_params(tree, None) is tree and shard_batch(tree, None) is tree
    assert shard_params(tree, None, dtype=jnp.bfloat16)["lm_head"].dtype == jnp.bfloat16
    assert shard_params(tree, None, dtype=jnp.bfloat16)["n"].dtype == jnp.int32

    def step(state, x):
        new = {"lm_head": state["lm_head"] + x, "n": state["n"] + 1}
        return new, {"sum": jnp.sum(new["lm_head"])}

    for mesh in (None, make_mesh(MeshConfig(), devices=jax.devices()[:1])):
        state = shard_params({k: jnp.copy(v) for k, v in tree.items()}, mesh)
        new, metrics = jit_step(step, mesh, state)(state, jnp.float32(2.0))
        assert float(metrics["sum"]) == 72.0 and int(new["n"]) == 1
        if mesh is not None:
            assert new["lm_head"].sharding.spec == P("fsdp", "tensor") and metrics["sum"].sharding.spec == P()
