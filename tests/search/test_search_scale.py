"""Width and resolution variants of a user's ONNX: shapes follow the channel groups, refusals name the node."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from nirc.search.families import Candidate, make_divisible
from nirc.search.scale import ScaleError, model_variants, scale_resolution, scale_width


def _run(model: onnx.ModelProto, size: int) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString())
    image = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    return list(session.run(None, {session.get_inputs()[0].name: image}))


def _conv_channels(model: onnx.ModelProto) -> list[tuple[int, int]]:
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    return [(inits[n.input[1]][0], next((a.i for a in n.attribute if a.name == "group"), 1))
            for n in model.graph.node if n.op_type == "Conv"]  # fmt: skip


def test_width_scales_every_group_but_keeps_input_and_output() -> None:
    model = Candidate("mobilenetv2", "w1.0", 64, 10).build()
    half = scale_width(model, 0.5)
    onnx.checker.check_model(half, full_check=True)
    before, after = _conv_channels(model), _conv_channels(half)
    assert len(before) == len(after)
    for (c0, g0), (c1, g1) in zip(before, after, strict=True):
        assert c1 == make_divisible(c0 * 0.5)
        assert (g0 == 1) == (g1 == 1)  # depthwise convs stay depthwise, with the new channel count
        if g0 > 1:
            assert g1 == c1
    assert _run(half, 64)[0].shape == (1, 10)
    assert sum(t.ByteSize() for t in half.graph.initializer) < 0.4 * sum(t.ByteSize() for t in model.graph.initializer)


def test_residual_adds_tie_their_inputs_together() -> None:
    model = Candidate("resnet", "d10-w0.5", 64, 10).build()
    scaled = scale_width(model, 0.75)
    _run(scaled, 64)  # an Add of two differently scaled branches would fail here
    assert scale_width(model, 1.0) is model


def test_resolution_changes_the_input_and_the_cost_not_the_output() -> None:
    model = Candidate("resnet", "d10-w0.5", 64, 10).build()
    small = scale_resolution(model, 32)
    assert [d.dim_value for d in small.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert _run(small, 32)[0].shape == (1, 10)


def _flatten_spatial_model() -> onnx.ModelProto:
    """Conv -> Flatten of a 4x4 map -> Gemm: the Gemm's size pins the resolution."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.ones((2, 64), np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
                              [w, fc])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_refusals_name_the_node() -> None:
    model = _flatten_spatial_model()
    with pytest.raises(ScaleError, match="flatten"):
        scale_width(model, 0.5)
    with pytest.raises(ScaleError, match="input size 8 breaks the graph"):
        scale_resolution(model, 8)
    yolo = Candidate("yolo", "n", 128, 2).build()
    with pytest.raises(ScaleError, match=r"model\.2\.split \(Split\)"):
        scale_width(yolo, 0.5)


def test_identity_shared_weights_are_scaled_separately() -> None:
    """TorchScript exports share equal initializers through Identity nodes; each user gets its own copy."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16, 1, 1)).astype(np.float32), "w")
    stem = numpy_helper.from_array(np.ones((16, 3, 1, 1), np.float32), "stem")
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["a"], name="stem"),
        helper.make_node("Identity", ["w"], ["w2"], name="share"),
        helper.make_node("Conv", ["a", "w"], ["b"], name="c1"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 8, 8])],
                              [w, stem])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    half = scale_width(model, 0.5)
    shapes = {t.name: list(t.dims) for t in half.graph.initializer}
    assert shapes["w"] == [8, 8, 1, 1] and shapes["w2"] == [16, 8, 1, 1]  # output y keeps its 16 channels
    assert _run(half, 8)[0].shape == (1, 16, 8, 8)


def test_model_variants_fall_back_to_resolution_with_a_note() -> None:
    yolo = Candidate("yolo", "n", 256, 2).build()
    space, models, notes = model_variants(yolo, "det", widths=(0.5, 1.0))
    assert [c.name for c in space] == ["det-w1.0-256", "det-w1.0-192", "det-w1.0-128"]
    assert set(models) == {c.name for c in space}
    assert len(notes) == 1 and notes[0].startswith("width x0.5: node model.2.split (Split)")
