from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import assert_same_function, parse

from nirc.errors import DynamicShapeError, ModelLoadError, UnsupportedOperatorError
from nirc.ir import CANONICAL_OPSET, IRModel

CONV_TEXT = """
<ir_version: 7, opset_import: ["" : 13]>
g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
    c = Conv <pads = [1,1,1,1]> (x, w)
    y = Relu (c)
}
"""


def _conv_model() -> onnx.ModelProto:
    return parse(CONV_TEXT, w=np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32))


def test_converts_opset_and_fixes_input_shape() -> None:
    model = IRModel.load(_conv_model(), {"x": [1, 3, 8, 8]})
    proto = model.to_proto()
    assert proto.opset_import[0].version == CANONICAL_OPSET
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
    assert shapes["c"] == [1, 4, 8, 8]
    fixed = _conv_model()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert_same_function(fixed, proto)


def test_dynamic_dim_without_input_shape_is_an_error() -> None:
    with pytest.raises(DynamicShapeError, match=r"input 'x' has dynamic shape \[N,3,8,8\].*--input-shape x=1,3,8,8"):
        IRModel.load(_conv_model())


def test_input_shape_naming_unknown_input() -> None:
    with pytest.raises(ModelLoadError, match="names 'nope'"):
        IRModel.load(_conv_model(), {"nope": [1, 3, 8, 8]})


def test_input_shape_wrong_rank() -> None:
    with pytest.raises(ModelLoadError, match="rank 2"):
        IRModel.load(_conv_model(), {"x": [1, 3]})


def test_shape_arithmetic_resolved_by_runtime() -> None:
    """Reshape whose shape is computed from Shape/Gather: symbolic inference alone is not enough."""
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,4,2,3] x) => (float[1,24] y) {
        s = Shape (x)
        zero = Constant <value = int64[1] {0}> ()
        n = Gather (s, zero)
        minus = Constant <value = int64[1] {-1}> ()
        shape = Concat <axis = 0> (n, minus)
        y = Reshape (x, shape)
    }
    """
    proto = IRModel.load(parse(text)).to_proto()
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 24]


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        IRModel.load(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="not a file"):
        IRModel.load(tmp_path)


def test_garbage_and_truncated_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx: not a valid ONNX model"):
        IRModel.load(garbage)
    model = _conv_model()
    data = model.SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.onnx"):
        IRModel.load(truncated)


def test_checker_failure(tmp_path: Path) -> None:
    model = _conv_model()
    model.graph.node[0].input[1] = "undefined_weight"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=r"broken\.onnx: ONNX checker failed"):
        IRModel.load(path, {"x": [1, 3, 8, 8]})


def test_unknown_domain_lists_ops() -> None:
    text = """
    <ir_version: 9, opset_import: ["" : 18, "com.acme" : 1]>
    g (float[1,4] x) => (float[1,4] y) {
        a = com.acme.Frobnicate (x)
        b = com.acme.Frobnicate (a)
        y = Relu (b)
    }
    """
    model = onnx.parser.parse_model(text)
    with pytest.raises(UnsupportedOperatorError, match=r"com.acme::Frobnicate x2"):
        IRModel.load(model)


def test_export_is_deterministic() -> None:
    a = IRModel.load(_conv_model(), {"x": [1, 3, 8, 8]}).to_proto().SerializeToString()
    b = IRModel.load(_conv_model(), {"x": [1, 3, 8, 8]}).to_proto().SerializeToString()
    assert a == b
