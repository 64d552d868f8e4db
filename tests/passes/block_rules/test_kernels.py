"""The conv algebra under the exact rules (passes/block_rules/kernels.py), checked against ONNX Runtime on seeded
random geometries: composition (refused exactly where padding makes it inexact), embedding and sums of
branches, space-to-depth re-reading, grouping."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from nirc.passes.block_rules.kernels import (
    LinearConv,
    add,
    block_diagonal,
    compose,
    densify,
    regroup,
    space_to_depth_conv,
    space_to_depth_weight,
)
from nirc_testing import ort_run
from onnx import helper, numpy_helper


def _conv_model(convs: list[LinearConv], hw: tuple[int, int], parallel: bool = False) -> onnx.ModelProto:
    """``convs`` chained (or summed when ``parallel``) as ONNX Convs on an input of ``hw``."""
    nodes, inits = [], []
    x = "x"
    outs = []
    for i, c in enumerate(convs):
        inits += [
            numpy_helper.from_array(c.weight.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(c.bias.astype(np.float32), f"b{i}"),
        ]
        out = f"y{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                ["x" if parallel else x, f"w{i}", f"b{i}"],
                [out],
                kernel_shape=list(c.kernel),
                strides=list(c.strides),
                pads=list(c.pads),
            )
        )
        outs.append(out)
        x = out
    if parallel:
        nodes.append(helper.make_node("Sum", outs, ["y"]))
        x = "y"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, convs[0].cin, *hw])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _random_conv(rng: np.random.Generator, cin: int, cout: int, k: tuple[int, int], s: int, p: tuple[int, ...],
                 bias: bool = True) -> LinearConv:  # fmt: skip
    weight = rng.standard_normal((cout, cin, *k)) / np.sqrt(cin * k[0] * k[1])
    b = rng.standard_normal(cout) * 0.1 if bias else np.zeros(cout)
    return LinearConv(weight, b, (s, s), (p[0], p[1], p[2], p[3]))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    (y,) = ort_run(model, {"x": x})
    return y


GEOMETRIES = list(
    itertools.product(
        [(1, 1), (3, 3), (1, 3)],  # first kernel
        [1, 2],  # first stride
        [(1, 1), (3, 3), (2, 2)],  # second kernel
        [1, 2],  # second stride
        [False, True],  # second conv padded
    )
)


@pytest.mark.parametrize(("k1", "s1", "k2", "s2", "pad2"), GEOMETRIES)
def test_compose_is_exact_or_refused(k1: tuple[int, int], s1: int, k2: tuple[int, int], s2: int, pad2: bool) -> None:
    rng = np.random.default_rng(hash((k1, s1, k2, s2, pad2)) % 2**32)
    hw = (11, 10)
    p1 = (k1[0] // 2, k1[1] // 2, k1[0] // 2, k1[1] // 2)
    p2 = (k2[0] // 2, k2[1] // 2, k2[0] // 2, k2[1] // 2) if pad2 else (0, 0, 0, 0)
    first = _random_conv(rng, 3, 4, k1, s1, p1, bias=not pad2)
    second = _random_conv(rng, 4, 5, k2, s2, p2)
    merged = compose(first, second)
    if isinstance(merged, str):
        assert pad2 and any(p2) and not first.pointwise  # refused only where the padding breaks exactness
        return
    x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
    ref = _run(_conv_model([first, second], hw), x)
    got = _run(_conv_model([merged], hw), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_compose_refuses_a_bias_before_a_padded_conv() -> None:
    rng = np.random.default_rng(0)
    first = _random_conv(rng, 3, 4, (1, 1), 1, (0, 0, 0, 0), bias=True)
    second = _random_conv(rng, 4, 5, (3, 3), 1, (1, 1, 1, 1))
    assert "bias" in str(compose(first, second))
    no_bias = LinearConv(first.weight, np.zeros(4))
    assert isinstance(compose(no_bias, second), LinearConv)


@pytest.mark.parametrize("stride", [1, 2])
def test_sum_of_aligned_branches(stride: int) -> None:
    rng = np.random.default_rng(stride)
    hw = (9, 8)
    branches = [
        _random_conv(rng, 4, 4, (3, 3), stride, (1, 1, 1, 1)),
        _random_conv(rng, 4, 4, (1, 1), stride, (0, 0, 0, 0)),
        _random_conv(rng, 4, 4, (1, 3), stride, (0, 1, 0, 1)),
        _random_conv(rng, 4, 4, (3, 1), stride, (1, 0, 1, 0)),
    ]
    merged = add(branches, hw)
    assert isinstance(merged, LinearConv) and merged.kernel == (3, 3)
    x = rng.standard_normal((1, 4, *hw)).astype(np.float32)
    np.testing.assert_allclose(
        _run(_conv_model([merged], hw), x), _run(_conv_model(branches, hw, parallel=True), x), rtol=1e-5, atol=1e-5
    )


def test_sum_refuses_misaligned_windows() -> None:
    rng = np.random.default_rng(0)
    # a 3x3 with no padding reads rows i..i+2, a 1x1 reads row i: not the same output positions
    a = _random_conv(rng, 2, 2, (3, 3), 1, (0, 0, 0, 0))
    b = _random_conv(rng, 2, 2, (1, 1), 1, (0, 0, 0, 0))
    assert isinstance(add([a, b], (6, 6)), str)


@pytest.mark.parametrize(
    ("k", "s", "p", "hw"),
    [
        ((3, 3), 2, 1, (8, 8)),
        ((7, 7), 2, 3, (12, 10)),
        ((4, 4), 4, 0, (16, 16)),
        ((3, 3), 4, 1, (12, 8)),
        ((5, 5), 2, 0, (10, 10)),
    ],
)
def test_space_to_depth_conv_reads_the_same_pixels(k: tuple[int, int], s: int, p: int, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(s * 10 + p)
    conv = _random_conv(rng, 3, 6, k, s, (p, p, p, p))
    s2d = space_to_depth_conv(conv, (2, 2), hw)
    assert isinstance(s2d, LinearConv) and s2d.strides == (s // 2, s // 2)
    x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
    to_depth = LinearConv(space_to_depth_weight(3, (2, 2)), np.zeros(12), (2, 2))
    ref = _run(_conv_model([conv], hw), x)
    got = _run(_conv_model([to_depth, s2d], hw), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_space_to_depth_refuses_odd_sizes_and_strides() -> None:
    conv = _random_conv(np.random.default_rng(0), 3, 4, (3, 3), 2, (1, 1, 1, 1))
    assert isinstance(space_to_depth_conv(conv, (2, 2), (7, 8)), str)
    odd = _random_conv(np.random.default_rng(0), 3, 4, (3, 3), 3, (1, 1, 1, 1))
    assert isinstance(space_to_depth_conv(odd, (2, 2), (8, 8)), str)


def test_grouping_round_trip() -> None:
    w = np.random.default_rng(0).standard_normal((12, 3, 3, 3))
    dense = densify(w, 4)
    assert dense.shape == (12, 12, 3, 3)
    np.testing.assert_array_equal(block_diagonal(dense, 4), w)
    assert block_diagonal(dense, 12) is None  # not diagonal at a finer grouping
    coarse = block_diagonal(dense, 2)
    assert coarse is not None and coarse.shape == (12, 6, 3, 3)
    assert regroup(dense, [1, 2, 4, 12])[1] == 4
