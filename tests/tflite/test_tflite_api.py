"""Public API contract: supported_ops, check_supported messages, TensorIO, model header."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tflite.Model import Model
from tflite_helpers import make_model, op_names, run_litert

from nirc.errors import BackendError, CalibrationError, UnsupportedOperatorError
from nirc.tflite import TensorIO, check_supported, emit_tflite, supported_ops

REQUIRED = {
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
    "ReduceMean", "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Reshape",
    "Flatten", "Squeeze", "Unsqueeze", "Softmax", "Resize", "Pad", "Slice", "Split", "Transpose",
    "BatchNormalization", "Identity", "Dropout",
}  # fmt: skip


def test_supported_ops_cover_required() -> None:
    ops = supported_ops()
    assert isinstance(ops, frozenset)
    assert ops >= REQUIRED


def test_check_supported_lists_every_op_with_counts() -> None:
    nodes = [
        h.make_node("Erf", ["x"], ["a"]),
        h.make_node("Erf", ["a"], ["b"]),
        h.make_node("Det", ["b"], ["c"]),
        h.make_node("Relu", ["c"], ["y"]),
    ]
    model = make_model(nodes, {"x": (1, 2, 3, 3)}, ["y"])
    with pytest.raises(UnsupportedOperatorError) as err:
        check_supported(model, "net.onnx")
    assert str(err.value) == "net.onnx: ops with no TFLite form: Erf x2, Det x1"
    with pytest.raises(UnsupportedOperatorError):
        emit_tflite(model, source="net.onnx")


def test_check_supported_names_node_with_bad_attributes() -> None:
    nodes = [
        h.make_node("Resize", ["x", "", "s"], ["r"], name="up1", mode="cubic"),
        h.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2]),
    ]
    model = make_model(nodes, {"x": (1, 2, 4, 4)}, ["y"], {"s": np.asarray([1, 1, 2, 2], np.float32)})
    with pytest.raises(UnsupportedOperatorError) as err:
        check_supported(model, "m.onnx")
    msg = str(err.value)
    assert msg.startswith("m.onnx: unsupported attributes: ")
    assert "Resize 'up1'" in msg and "cubic" in msg
    assert "MaxPool 'pool'" in msg and "dilated" in msg


def test_constant_subgraphs_are_not_unsupported() -> None:
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Cast", ["s"], ["sf"], to=onnx.TensorProto.FLOAT),
        h.make_node("Cast", ["sf"], ["s2"], to=onnx.TensorProto.INT64),
        h.make_node("Reshape", ["x", "s2"], ["y"]),
    ]
    model = make_model(nodes, {"x": (1, 2, 3, 3)}, ["y"])
    check_supported(model, "m")
    assert op_names(emit_tflite(model).data) == ["RESHAPE"]


def test_tensor_io_and_header() -> None:
    model = make_model(
        [h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("Flatten", ["c"], ["y"])],
        {"x": (1, 3, 4, 5)},
        ["y", "c"],
        {"w": np.ones((2, 3, 1, 1), np.float32)},
    )
    tfl = emit_tflite(model)
    assert tfl.inputs == (TensorIO("x", (1, 3, 4, 5), (1, 4, 5, 3), (0, 2, 3, 1), "float32", None, None),)
    assert tfl.outputs[0] == TensorIO("y", (1, 40), (1, 40), None, "float32", None, None)
    assert tfl.outputs[1].perm == (0, 2, 3, 1) and tfl.outputs[1].tflite_shape == (1, 4, 5, 2)
    m = Model.GetRootAsModel(tfl.data, 0)
    assert m.Version() == 3
    assert m.Description() == b"nirc"
    assert m.MetadataLength() == 0
    assert tfl.data[4:8] == b"TFL3"
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    y, c = run_litert(tfl, {"x": x})
    np.testing.assert_allclose(c, np.einsum("oi,nihw->nohw", np.ones((2, 3)), x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, c.reshape(1, -1), rtol=1e-6)


def test_int8_io_parameters() -> None:
    model = make_model([h.make_node("Relu", ["x"], ["y"])], {"x": (1, 2, 2, 2)}, ["y"])
    ranges = {"x": (-1.0, 3.0), "y": (0.0, 3.0)}
    tfl = emit_tflite(model, dtype="int8", ranges=ranges)
    (inp,), (out,) = tfl.inputs, tfl.outputs
    assert inp.dtype == out.dtype == "int8"
    assert inp.scale == pytest.approx(4.0 / 255) and inp.zero_point == round(-128 + 1.0 / (4.0 / 255))
    assert out.scale == pytest.approx(3.0 / 255) and out.zero_point == -128
    f = emit_tflite(model, dtype="int8", ranges=ranges, io_dtype="float32")
    assert f.inputs[0].dtype == "float32" and f.inputs[0].scale is None
    assert op_names(f.data) == ["QUANTIZE", "RELU", "DEQUANTIZE"]


def test_errors() -> None:
    model = make_model([h.make_node("Relu", ["x"], ["y"])], {"x": (1, 2, 2, 2)}, ["y"])
    with pytest.raises(CalibrationError, match="'x'"):
        emit_tflite(model, dtype="int8", ranges={"y": (0.0, 1.0)})
    with pytest.raises(CalibrationError, match="'y'"):
        emit_tflite(model, dtype="int8", ranges={"x": (0.0, 1.0)})
    with pytest.raises(BackendError, match="dtype"):
        emit_tflite(model, dtype="int4")  # type: ignore[arg-type]
