"""Per-op float32 tests: tiny ONNX graphs, emitted and run in LiteRT vs onnxruntime."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tflite_helpers import make_model, op_names, run_litert, run_ort

from nirc.tflite import emit_tflite

RNG = np.random.default_rng(1234)
X = (1, 4, 8, 8)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture(autouse=True)
def _reseed() -> None:
    """Each test draws the same weights and inputs whatever else runs (-k, xdist)."""
    global RNG
    RNG = np.random.default_rng(1234)


def node(op: str, ins: list[str], outs: list[str] | None = None, **kw: object) -> onnx.NodeProto:
    return h.make_node(op, ins, outs or ["y"], **kw)


def single(op: str, shape: tuple[int, ...] = X, extra: dict[str, np.ndarray] | None = None,
           ins: list[str] | None = None, **kw: object) -> onnx.ModelProto:  # fmt: skip
    return make_model([node(op, ins or ["x"], **kw)], {"x": shape}, ["y"], extra)


def i64(*v: int) -> np.ndarray:
    return np.asarray(v, np.int64)


def f32(*v: float) -> np.ndarray:
    return np.asarray(v, np.float32)


CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_same": lambda: single(
        "Conv", extra={"w": rand(6, 4, 3, 3), "b": rand(6)}, ins=["x", "w", "b"], pads=[1, 1, 1, 1]
    ),
    "conv_stride2_pad": lambda: single(
        "Conv", extra={"w": rand(6, 4, 3, 3)}, ins=["x", "w"], pads=[1, 1, 1, 1], strides=[2, 2]
    ),
    "conv_valid_rect": lambda: single("Conv", extra={"w": rand(5, 4, 3, 2)}, ins=["x", "w"]),
    "conv_dilated": lambda: single(
        "Conv", extra={"w": rand(3, 4, 3, 3)}, ins=["x", "w"], dilations=[2, 2], pads=[2, 2, 2, 2]
    ),
    "conv_asym_pads": lambda: single(
        "Conv", extra={"w": rand(3, 4, 3, 3)}, ins=["x", "w"], pads=[0, 1, 2, 0]
    ),
    "conv_same_upper_s2": lambda: single(
        "Conv", extra={"w": rand(3, 4, 3, 3)}, ins=["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2]
    ),
    "conv_same_lower": lambda: single(
        "Conv", extra={"w": rand(3, 4, 2, 2)}, ins=["x", "w"], auto_pad="SAME_LOWER"
    ),
    "depthwise": lambda: single(
        "Conv", extra={"w": rand(4, 1, 3, 3), "b": rand(4)}, ins=["x", "w", "b"], group=4, pads=[1, 1, 1, 1]
    ),
    "depthwise_mult2": lambda: single(
        "Conv", extra={"w": rand(8, 1, 3, 3)}, ins=["x", "w"], group=4, strides=[2, 2]
    ),
    "grouped_conv": lambda: single(
        "Conv", extra={"w": rand(6, 2, 3, 3), "b": rand(6)}, ins=["x", "w", "b"], group=2, pads=[1, 1, 1, 1]
    ),
    "grouped_conv_dilated": lambda: single(
        "Conv", extra={"w": rand(4, 1, 3, 3)}, ins=["x", "w"], group=4, dilations=[2, 2]
    ),
    "gemm_transB": lambda: single(
        "Gemm", (2, 16), {"w": rand(5, 16), "b": rand(5)}, ["x", "w", "b"], transB=1
    ),
    "gemm_alpha_beta": lambda: single(
        "Gemm", (1, 16), {"w": rand(16, 5), "b": rand(1, 5)}, ["x", "w", "b"], alpha=0.5, beta=2.0
    ),
    "gemm_matrix_bias": lambda: single("Gemm", (3, 16), {"w": rand(16, 5), "b": rand(3, 5)}, ["x", "w", "b"]),
    "matmul": lambda: single("MatMul", (2, 16), {"w": rand(16, 7)}, ["x", "w"]),
    "matmul_3d": lambda: single("MatMul", (2, 3, 16), {"w": rand(16, 7)}, ["x", "w"]),
    "add_const_channel": lambda: single("Add", extra={"c": rand(4, 1, 1)}, ins=["x", "c"]),
    "mul_scalar": lambda: single("Mul", extra={"c": f32(1.5)}, ins=["x", "c"]),
    "sub_const_first": lambda: single("Sub", extra={"c": rand(1, 1, 8)}, ins=["c", "x"]),
    "div_const": lambda: single("Div", extra={"c": f32(3.0)}, ins=["x", "c"]),
    "prelu": lambda: single("PRelu", extra={"s": rand(4, 1, 1)}, ins=["x", "s"]),
    "maxpool_s2": lambda: single("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    "maxpool_pad": lambda: single("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil": lambda: single("MaxPool", (1, 4, 7, 7), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "avgpool_same_exclude": lambda: single("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_include_pad": lambda: single(
        "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "global_avgpool": lambda: single("GlobalAveragePool"),
    "global_maxpool": lambda: single("GlobalMaxPool"),
    "reducemean_hw": lambda: single("ReduceMean", extra={"a": i64(2, 3)}, ins=["x", "a"], keepdims=1),
    "reducemean_hw_drop": lambda: single("ReduceMean", extra={"a": i64(-1, -2)}, ins=["x", "a"], keepdims=0),
    "reducemean_c": lambda: single("ReduceMean", extra={"a": i64(1)}, ins=["x", "a"], keepdims=0),
    "relu": lambda: single("Relu"),
    "clip_relu6": lambda: single("Clip", extra={"lo": f32(0), "hi": f32(6)}, ins=["x", "lo", "hi"]),
    "clip_n1_1": lambda: single("Clip", extra={"lo": f32(-1), "hi": f32(1)}, ins=["x", "lo", "hi"]),
    "clip_0_1": lambda: single("Clip", extra={"lo": f32(0), "hi": f32(1)}, ins=["x", "lo", "hi"]),
    "clip_other": lambda: single("Clip", extra={"lo": f32(-0.5), "hi": f32(0.7)}, ins=["x", "lo", "hi"]),
    "clip_min_only": lambda: single("Clip", extra={"lo": f32(-0.3)}, ins=["x", "lo"]),
    "leakyrelu": lambda: single("LeakyRelu", alpha=0.1),
    "sigmoid": lambda: single("Sigmoid"),
    "tanh": lambda: single("Tanh"),
    "hardswish": lambda: single("HardSwish"),
    "hardsigmoid": lambda: single("HardSigmoid", alpha=0.3, beta=0.4),
    "softmax_c": lambda: single("Softmax", axis=1),
    "softmax_w": lambda: single("Softmax", axis=3),
    "softmax_2d": lambda: single("Softmax", (3, 10)),
    "reshape": lambda: single("Reshape", extra={"s": i64(1, 4, 64)}, ins=["x", "s"]),
    "flatten_2d": lambda: single("Flatten", (2, 3, 4)),
    "squeeze": lambda: single("Squeeze", (1, 4, 1, 8), {"a": i64(2)}, ["x", "a"]),
    "unsqueeze": lambda: single("Unsqueeze", (4, 8), {"a": i64(0, 1)}, ["x", "a"]),
    "transpose_hw": lambda: single("Transpose", perm=[0, 1, 3, 2]),
    "transpose_nhwc": lambda: single("Transpose", perm=[0, 2, 3, 1]),
    "pad_const": lambda: single("Pad", extra={"p": i64(0, 0, 1, 2, 0, 1, 3, 0)}, ins=["x", "p"]),
    "pad_value": lambda: single(
        "Pad", extra={"p": i64(0, 0, 1, 2, 0, 0, 3, 0), "v": f32(1.5)}, ins=["x", "p", "v"]
    ),
    "pad_reflect": lambda: single(
        "Pad", extra={"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, ins=["x", "p"], mode="reflect"
    ),
    "slice_c": lambda: single(
        "Slice", extra={"s": i64(1), "e": i64(3), "a": i64(1)}, ins=["x", "s", "e", "a"]
    ),
    "slice_step": lambda: single(
        "Slice",
        extra={"s": i64(1, 0), "e": i64(8, 7), "a": i64(2, 3), "t": i64(2, 3)},
        ins=["x", "s", "e", "a", "t"],
    ),
    "slice_negstep": lambda: single(
        "Slice",
        extra={"s": i64(-1), "e": i64(-100), "a": i64(3), "t": i64(-1)},
        ins=["x", "s", "e", "a", "t"],
    ),
    "resize_nearest_2x": lambda: single(
        "Resize",
        extra={"s": f32(1, 1, 2, 2)},
        ins=["x", "", "s"],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    ),
    "resize_nearest_half_pixel": lambda: single(
        "Resize", extra={"s": f32(1, 1, 2, 2)}, ins=["x", "", "s"], mode="nearest"
    ),
    "resize_bilinear_half_pixel": lambda: single(
        "Resize", extra={"s": f32(1, 1, 2, 2)}, ins=["x", "", "s"], mode="linear"
    ),
    "resize_bilinear_align": lambda: single(
        "Resize",
        extra={"z": i64(1, 4, 15, 15)},
        ins=["x", "", "", "z"],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    ),
    "resize_bilinear_asym": lambda: single(
        "Resize",
        extra={"s": f32(1, 1, 2, 3)},
        ins=["x", "", "s"],
        mode="linear",
        coordinate_transformation_mode="asymmetric",
    ),
    "batchnorm": lambda: single(
        "BatchNormalization",
        extra={"s": rand(4), "b": rand(4), "m": rand(4), "v": np.abs(rand(4)) + 0.5},
        ins=["x", "s", "b", "m", "v"],
    ),
}


def multi(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], outputs: list[str],
          inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:  # fmt: skip
    return make_model(nodes, inputs, outputs, inits)


GRAPHS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_relu_fused": lambda: multi(
        [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"])],
        {"x": X},
        ["y"],
        {"w": rand(4, 4, 3, 3)},
    ),
    "conv_relu6_fused": lambda: multi(
        [node("Conv", ["x", "w"], ["c"]), node("Clip", ["c", "lo", "hi"])],
        {"x": X},
        ["y"],
        {"w": rand(4, 4, 1, 1), "lo": f32(0), "hi": f32(6)},
    ),
    "conv_relu_both_outputs": lambda: multi(
        [node("Conv", ["x", "w"], ["c"]), node("Relu", ["c"])], {"x": X}, ["c", "y"], {"w": rand(4, 4, 1, 1)}
    ),
    "add_two_inputs": lambda: multi([node("Add", ["x", "z"])], {"x": X, "z": X}, ["y"]),
    "add_broadcast_input": lambda: multi([node("Add", ["x", "z"])], {"x": X, "z": (4, 1, 1)}, ["y"]),
    "concat_c": lambda: multi(
        [node("Relu", ["x"], ["a"]), node("Concat", ["a", "x", "z"], axis=1)],
        {"x": X, "z": (1, 2, 8, 8)},
        ["y"],
    ),
    "concat_w_const": lambda: multi(
        [node("Concat", ["x", "k"], axis=3)], {"x": X}, ["y"], {"k": rand(1, 4, 8, 2)}
    ),
    "split_equal": lambda: multi(
        [node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2)], {"x": X}, ["a", "b"]
    ),
    "split_sizes": lambda: multi(
        [node("Split", ["x", "s"], ["a", "b"], axis=2)], {"x": X}, ["a", "b"], {"s": i64(3, 5)}
    ),
    "silu": lambda: multi([node("Sigmoid", ["x"], ["s"]), node("Mul", ["x", "s"])], {"x": X}, ["y"]),
    "flatten_gemm": lambda: multi(
        [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "w", "b"], transB=1)],
        {"x": X},
        ["y"],
        {"w": rand(10, 256), "b": rand(10)},
    ),
    "reshape_matmul": lambda: multi(
        [node("Reshape", ["x", "s"], ["f"]), node("MatMul", ["f", "w"])],
        {"x": X},
        ["y"],
        {"s": i64(1, -1), "w": rand(256, 6)},
    ),
    "gap_flatten_gemm": lambda: multi(
        [
            node("GlobalAveragePool", ["x"], ["g"]),
            node("Flatten", ["g"], ["f"]),
            node("Gemm", ["f", "w"], transB=1),
        ],
        {"x": X},
        ["y"],
        {"w": rand(3, 4)},
    ),
    "flatten_relu": lambda: multi([node("Flatten", ["x"], ["f"]), node("Relu", ["f"])], {"x": X}, ["y"]),
    "identity_out": lambda: multi([node("Identity", ["x"])], {"x": X}, ["y"]),
    "constant_node": lambda: multi(
        [
            h.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(rand(4, 1, 1))),
            node("Mul", ["x", "k"]),
        ],
        {"x": X},
        ["y"],
    ),
    "shape_arith": lambda: multi(
        [
            node("Shape", ["x"], ["sh"]),
            node("Gather", ["sh", "i0"], ["n"]),
            node("Unsqueeze", ["n", "a0"], ["n1"]),
            node("Concat", ["n1", "m1"], ["s"], axis=0),
            node("Reshape", ["x", "s"]),
        ],
        {"x": X},
        ["y"],
        {"i0": np.asarray(0, np.int64), "a0": i64(0), "m1": i64(-1)},
    ),
    "bn_relu_fused": lambda: multi(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"]), node("Relu", ["n"])],
        {"x": X},
        ["y"],
        {"s": rand(4), "b": rand(4), "m": rand(4), "v": np.abs(rand(4)) + 0.5},
    ),
}


def _check(model: onnx.ModelProto) -> list[str]:
    feeds = {
        vi.name: rand(*[d.dim_value for d in vi.type.tensor_type.shape.dim])
        for vi in model.graph.input
        if vi.name not in {i.name for i in model.graph.initializer}
    }
    tfl = emit_tflite(model)
    want = run_ort(model, feeds)
    got = run_litert(tfl, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    return op_names(tfl.data)


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_op(name: str) -> None:
    ops = _check(CASES[name]())
    cnn = not name.startswith(("transpose", "softmax_w", "reducemean_c", "reshape", "squeeze"))
    if cnn:
        assert "TRANSPOSE" not in ops, ops


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_graph(name: str) -> None:
    ops = _check(GRAPHS[name]())
    if name not in ("flatten_relu", "shape_arith"):  # flattened NHWC maps not feeding an FC
        assert "TRANSPOSE" not in ops, ops
    if name.endswith("_fused"):
        assert not {"RELU", "RELU6"} & set(ops), ops
    if name == "conv_relu_both_outputs":
        assert "RELU" in ops


def test_fused_ops_expected() -> None:
    ops = op_names(emit_tflite(GRAPHS["flatten_gemm"]()).data)
    assert ops == ["RESHAPE", "FULLY_CONNECTED"]
    assert op_names(emit_tflite(CASES["grouped_conv"]()).data) == [
        "SPLIT",
        "CONV_2D",
        "CONV_2D",
        "CONCATENATION",
    ]
    assert op_names(emit_tflite(CASES["depthwise"]()).data) == ["DEPTHWISE_CONV_2D"]
    assert op_names(emit_tflite(CASES["conv_stride2_pad"]()).data) == ["PAD", "CONV_2D"]
    assert op_names(emit_tflite(CASES["conv_same"]()).data) == ["CONV_2D"]
