"""decompose-layernorm: LayerNormalization, InstanceNormalization and PyTorch's GroupNorm export."""

from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.decompose_layernorm import DecomposeLayernormPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(7)
F32 = np.float32


def _vec(n: int, *shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 1.5, (n, *shape)).astype(F32)


def _layernorm(shape: str, axis: int, scale_shape: tuple[int, ...], bias: bool = True) -> object:
    inputs = "x, s, b" if bias else "x, s"
    inits = {"s": _vec(*scale_shape)}
    if bias:
        inits["b"] = RNG.standard_normal(scale_shape).astype(F32)
    return parse(
        HEADER + f"g (float[{shape}] x) => (float[{shape}] y) {{"
        f" y = LayerNormalization <axis = {axis}, epsilon = 0.001> ({inputs}) }}",
        **inits,
    )


@pytest.mark.parametrize(
    ("shape", "axis", "scale_shape", "means"),
    [
        ("1,6,5,8", -1, (8,), 2),  # ConvNeXt's nn.LayerNorm after permute(0, 2, 3, 1)
        ("2,7", -1, (7,), 2),  # a Linear head's LayerNorm
        ("1,8,6,5", 1, (8, 6, 5), 4),  # over C, H, W: space then channels, twice
    ],
)
def test_layernorm_becomes_means_and_rsqrt(shape: str, axis: int, scale_shape: tuple[int, ...], means: int) -> None:
    proto = _layernorm(shape, axis, scale_shape)
    model, changed, ctx = run_pass(DecomposeLayernormPass(), proto)
    assert changed and ctx.stats == {"layernorm": 1}
    assert ops(model) == {"ReduceMean": means, "Sub": 1, "Mul": 3, "Add": 2, "Pow": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)


def test_channel_reduction_of_a_map_is_taken_in_two_means() -> None:
    """Vela reduces depth only when H, W or C is 1: the pass never asks for C and space at once."""
    model, _, _ = run_pass(DecomposeLayernormPass(), _layernorm("1,8,6,5", 1, (8, 6, 5)))
    axes = [list(np.asarray(i.values)) for n in model.graph.nodes if n.op == "ReduceMean" for i in n.inputs[1:]]
    assert sorted(map(tuple, axes)) == [(1,), (1,), (2, 3), (2, 3)]


def test_layernorm_without_bias() -> None:
    proto = _layernorm("1,6,5,8", -1, (8,), bias=False)
    model, changed, _ = run_pass(DecomposeLayernormPass(), proto)
    assert changed and ops(model)["Add"] == 1
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)


def test_instance_norm() -> None:
    proto = parse(
        HEADER + "g (float[1,8,6,5] x) => (float[1,8,6,5] y) { y = InstanceNormalization (x, s, b) }",
        s=_vec(8),
        b=RNG.standard_normal(8).astype(F32),
    )
    model, changed, ctx = run_pass(DecomposeLayernormPass(), proto)
    assert changed and ctx.stats == {"instancenorm": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("groups", "convs"), [(1, 0), (2, 2), (8, 0)])
def test_pytorch_groupnorm_export_stays_4d(groups: int, convs: int) -> None:
    """Reshape [N, G, -1] -> InstanceNormalization -> Reshape back: no 3-D view of the map is left."""
    proto = parse(
        HEADER
        + """g (float[1,8,6,5] x) => (float[1,8,6,5] y) {
            r = Reshape (x, grouped)
            n = InstanceNormalization <epsilon = 0.00001> (r, s, b)
            y = Reshape (n, back)
        }""",
        grouped=np.array([1, groups, -1], np.int64),
        back=np.array([1, 8, 6, 5], np.int64),
        s=_vec(groups),
        b=RNG.standard_normal(groups).astype(F32),
    )
    model, changed, ctx = run_pass(DecomposeLayernormPass(), proto)
    assert changed and ctx.stats == {"groupnorm": 1}
    counts = ops(model)
    assert "Reshape" not in counts and "InstanceNormalization" not in counts
    assert counts.get("Conv", 0) == convs  # the group mean over 1 < G < C channel groups
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)


def test_layernorm_whose_mean_output_is_read_is_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[2,7] x) => (float[2,7] y, float[2,1] m) {
            y, m = LayerNormalization (x, s, b)
        }""",
        s=_vec(7),
        b=RNG.standard_normal(7).astype(F32),
    )
    model, changed, _ = run_pass(DecomposeLayernormPass(), proto)
    assert not changed and ops(model) == {"LayerNormalization": 1}


def test_instance_norm_with_runtime_scale_is_kept() -> None:
    proto = parse(
        HEADER + "g (float[1,4,3,3] x, float[4] s) => (float[1,4,3,3] y) { y = InstanceNormalization (x, s, b) }",
        b=np.zeros(4, F32),
    )
    _, changed, _ = run_pass(DecomposeLayernormPass(), proto)
    assert not changed


def test_no_normalization_means_no_change() -> None:
    _, changed, _ = run_pass(
        DecomposeLayernormPass(), parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { y = Relu (x) }")
    )
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(DecomposeLayernormPass(), _layernorm("1,6,5,8", -1, (8,)))
    _, changed, _ = run_pass(DecomposeLayernormPass(), model.to_proto())
    assert not changed
