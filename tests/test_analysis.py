"""Analysis numbers checked against an independent count: ORT-run shapes and raw initializers."""

from __future__ import annotations

import math
from pathlib import Path

import build_models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from nirc_testing import parse

from nirc.analysis import analyze
from nirc.ir import IRModel
from nirc.plugin import load_registry

ROOT = Path(__file__).resolve().parents[1]


def _runtime_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = [o for n in model.graph.node for o in n.output]
    for name in names:
        probe.graph.output.add().name = name
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {
        i.name: np.zeros(i.shape, np.float32)
        for i in session.get_inputs()
    }
    return {n: np.shape(a) for n, a in zip(names, session.run(names, feed), strict=True)}


def _independent_count(model: onnx.ModelProto) -> tuple[int, int]:
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes = _runtime_shapes(model)
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            macs += math.prod(shapes[node.output[0]]) * math.prod(w.shape[1:])
        elif node.op_type == "Gemm":
            w = weights[node.input[1]]
            macs += w.size  # batch 1: one MAC per weight
    # Not learned parameters: BN running statistics and Clip bounds.
    excluded = {n for node in model.graph.node if node.op_type == "BatchNormalization" for n in node.input[3:5]}
    excluded |= {n for node in model.graph.node if node.op_type == "Clip" for n in node.input[1:]}
    params = sum(a.size for n, a in weights.items() if n not in excluded and a.dtype == np.float32)
    return macs, params


@pytest.mark.parametrize(
    "name",
    ["tiny_cnn", "mobilenetv1_cifar100", "resnet50_cifar100", "vgg19_cifar100", "vgg19_224_10", "mobilenetv2_224"],
)
def test_macs_and_params_match_independent_count(name: str) -> None:
    proto = build_models.build(name)
    analysis = analyze(IRModel.load(proto), load_registry().get_target("ethos-u65"))
    assert (analysis.macs, analysis.params) == _independent_count(proto)
    assert analysis.macs == sum(layer.macs for layer in analysis.layers)


def test_shipped_example_matches_too() -> None:
    proto = onnx.load(str(ROOT / "examples" / "tiny_cnn.onnx"))
    analysis = analyze(IRModel.load(proto))
    assert (analysis.macs, analysis.params) == _independent_count(proto)


def test_peak_live_memory_by_hand() -> None:
    # x(1x4x8x8=256 B) feeds a and b; a(256) b(256) live together at Add with y(256).
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
        a = Relu (x)
        b = Sigmoid (x)
        y = Add (a, b)
    }
    """
    analysis = analyze(IRModel.load(parse(text)))
    # Step Sigmoid: x, a, b alive = 768; step Add: a, b, y = 768 (x dead after Sigmoid).
    assert analysis.peak_activation_bytes == 768
    assert analysis.activation_bytes == 768


def test_misaligned_channels_reported() -> None:
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,16,4,4] x) => (float[1,17,4,4] y) {
        y = Conv (x, w)
    }
    """
    proto = parse(text, w=np.ones((17, 16, 1, 1), np.float32))
    analysis = analyze(IRModel.load(proto), load_registry().get_target("ethos-u65"))
    assert analysis.layers[0].misaligned_channels == [17]
    assert analysis.weight_bytes == 17 * 16
