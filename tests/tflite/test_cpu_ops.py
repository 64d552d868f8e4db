"""Ops with a TFLite builtin but (mostly) no NPU form: lowered, never rejected; float and int8 vs ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tflite_helpers import calibrate, make_model, op_names, run_litert, run_ort, snr_db

from nirc.errors import UnsupportedOperatorError
from nirc.tflite import emit_tflite

SNR_MIN_DB = 20.0  # one int8 op whose output range is wide (EXP) or stepped (FLOOR)


def _feeds(seed: int, shape: tuple[int, ...], positive: bool) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2
    return {"x": np.abs(x) + 0.1 if positive else x}


def _check(
    model: onnx.ModelProto, shape: tuple[int, ...], positive: bool = False, snr_min: float = SNR_MIN_DB
) -> tuple[list[str], list[str]]:
    feeds = _feeds(0, shape, positive)
    tfl = emit_tflite(model)
    np.testing.assert_allclose(run_litert(tfl, feeds)[0], run_ort(model, feeds)[0], rtol=1e-4, atol=1e-5)
    ranges = calibrate(model, [_feeds(s, shape, positive) for s in range(32)])
    q = emit_tflite(model, dtype="int8", ranges=ranges)
    held_out = _feeds(100, shape, positive)
    assert snr_db(run_ort(model, held_out)[0], run_litert(q, held_out)[0]) > snr_min
    return op_names(tfl.data), op_names(q.data)


@pytest.mark.parametrize(
    ("op", "builtin", "positive"),
    [("Exp", "EXP", False), ("Log", "LOG", True), ("Neg", "NEG", False), ("Abs", "ABS", False),
     ("Sqrt", "SQRT", True)],
)  # fmt: skip
def test_unary_with_int8_kernels(op: str, builtin: str, positive: bool) -> None:
    model = make_model([h.make_node(op, ["x"], ["y"])], {"x": (1, 8, 4, 4)}, ["y"])
    assert _check(model, (1, 8, 4, 4), positive) == ([builtin], [builtin])


@pytest.mark.parametrize(("op", "builtin"), [("Sin", "SIN"), ("Cos", "COS"), ("Floor", "FLOOR"), ("Ceil", "CEIL")])
def test_float_only_unary_runs_in_a_float_island(op: str, builtin: str) -> None:
    model = make_model([h.make_node(op, ["x"], ["y"])], {"x": (1, 16, 8)}, ["y"])
    float_ops, int8_ops = _check(model, (1, 16, 8))
    assert float_ops == [builtin] and int8_ops == ["DEQUANTIZE", builtin, "QUANTIZE"]


@pytest.mark.parametrize(("op", "builtin"), [("ReduceMax", "REDUCE_MAX"), ("ReduceMin", "REDUCE_MIN"),
                                             ("ReduceSum", "SUM")])  # fmt: skip
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reducers(op: str, builtin: str, keepdims: int) -> None:
    nodes = [h.make_node("Mul", ["x", "two"], ["r"]), h.make_node(op, ["r", "axes"], ["y"], keepdims=keepdims)]
    model = make_model(nodes, {"x": (1, 8, 4, 4)}, ["y"], {"axes": np.asarray([1], np.int64), "two": np.float32(2.0)})
    float_ops, int8_ops = _check(model, (1, 8, 4, 4))
    assert builtin in float_ops and builtin in int8_ops and "TRANSPOSE" not in int8_ops, int8_ops


def test_float_cast_is_free_and_other_casts_are_rejected() -> None:
    nodes = [h.make_node("Cast", ["x"], ["c"], to=onnx.TensorProto.FLOAT), h.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, {"x": (1, 8)}, ["y"])
    assert _check(model, (1, 8)) == (["RELU"], ["RELU"])
    nodes = [h.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.INT32)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.INT32, [1, 8])])  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    with pytest.raises(UnsupportedOperatorError, match="float32 -> float32"):
        emit_tflite(model)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_l2_is_sqrt_of_sum_of_squares(keepdims: int) -> None:
    """F.normalize's ReduceL2 (EdgeNeXt): TFLite has no REDUCE_L2, so MUL, SUM, SQRT on the CPU."""
    nodes = [h.make_node("ReduceL2", ["x", "axes"], ["y"], keepdims=keepdims)]
    model = make_model(nodes, {"x": (1, 8, 4, 4)}, ["y"], {"axes": np.asarray([1], np.int64)})
    float_ops, int8_ops = _check(model, (1, 8, 4, 4))
    assert float_ops[:3] == ["MUL", "SUM", "SQRT"], float_ops
    assert int8_ops[:5] == ["DEQUANTIZE", "MUL", "SUM", "SQRT", "QUANTIZE"], int8_ops


def test_division_by_an_activation_is_a_cpu_div() -> None:
    """x / (|y| + 1) of two activations (a linear-attention normaliser): DIV, int8 in a float island."""
    nodes = [h.make_node("Abs", ["x"], ["a"]), h.make_node("Add", ["a", "one"], ["d"]),
             h.make_node("Mul", ["x", "three"], ["n"]), h.make_node("Div", ["n", "d"], ["y"])]  # fmt: skip
    model = make_model(nodes, {"x": (1, 8, 4, 4)}, ["y"], {"one": np.float32(1.0), "three": np.float32(3.0)})
    float_ops, int8_ops = _check(model, (1, 8, 4, 4))
    assert "DIV" in float_ops
    at = int8_ops.index("DIV")
    assert int8_ops[at - 2 : at] == ["DEQUANTIZE", "DEQUANTIZE"] and int8_ops[at + 1] == "QUANTIZE", int8_ops


def test_guarded_division_keeps_its_eps_in_the_float_island() -> None:
    """n / (d + eps) with d often exactly 0 (a ReLU): int8 cannot hold eps, so the ADD moves into the island.

    Node by node the int8 ADD rounds d + eps to d's zero and the island divides 0 by 0 (NaN,
    which QUANTIZE turns into an undefined int8 value).
    """
    nodes = [h.make_node("Relu", ["x"], ["d"]), h.make_node("Mul", ["d", "three"], ["n"]),
             h.make_node("Add", ["d", "eps"], ["g"]), h.make_node("Div", ["n", "g"], ["y"])]  # fmt: skip
    model = make_model(nodes, {"x": (1, 8, 4, 4)}, ["y"], {"eps": np.float32(1e-5), "three": np.float32(3.0)})
    # int8 still rounds n and d apart (a small d next to a rounded-away n), hence 12 dB, not 20;
    # node by node the 0 / 0 elements make the output NaN-derived noise.
    float_ops, int8_ops = _check(model, (1, 8, 4, 4), snr_min=12.0)
    at = int8_ops.index("DIV")
    assert int8_ops[at - 3 : at + 2] == ["DEQUANTIZE", "ADD", "DEQUANTIZE", "DIV", "QUANTIZE"], int8_ops
    assert int8_ops.count("ADD") == 1 and float_ops.count("ADD") == 1
