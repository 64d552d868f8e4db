"""Functional model on small graphs that exercise one NPU op family each, compiled for U65 and U55."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc.targets.ethos_u.sim import compare_with_reference, container
from onnx import TensorProto, helper, numpy_helper

from nirc.pipeline import optimize

_Inits = dict[str, np.ndarray]


def _conv(
    name: str, x: str, cin: int, cout: int, k: int, rng: np.random.Generator, **kw: int
) -> tuple[onnx.NodeProto, _Inits]:
    stride, dil = kw.get("stride", 1), kw.get("dil", 1)
    pad = kw.get("pad", k // 2 * dil)
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    node = helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [name], strides=[stride] * 2, pads=[pad] * 4, dilations=[dil] * 2
    )
    return node, {f"{name}.w": w, f"{name}.b": b}


def _build(kind: str) -> onnx.ModelProto:
    """conv 3->16 on a 16x16 input, then the op family under test."""
    rng = np.random.default_rng(7)
    nodes: list[onnx.NodeProto] = []
    inits: _Inits = {}

    def add(pair: tuple[onnx.NodeProto, _Inits]) -> None:
        nodes.append(pair[0])
        inits.update(pair[1])

    add(_conv("c1", "input", 3, 16, 3, rng))
    out = "c1"
    if kind == "pool":  # explicit-pad max pool, unpadded and padded average pools
        nodes.append(helper.make_node("MaxPool", [out], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
        nodes.append(helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]))
        nodes.append(
            helper.make_node("AveragePool", ["ap"], ["ap2"], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=0)
        )
        out = "ap2"
    elif kind == "activations":  # 8-bit LUTs in SHRAM
        for op, name, attrs in (("Sigmoid", "sg", {}), ("Tanh", "th", {}), ("LeakyRelu", "lr", {"alpha": 0.1})):
            nodes.append(helper.make_node(op, [out], [name], **attrs))
            out = name
        nodes.append(helper.make_node("HardSwish", [out], ["hs"]))
        out = "hs"
    elif kind == "kernels":  # dilation, kernels above 8x8 (sub-kernel split), stride 3
        add(_conv("c2", out, 16, 24, 3, rng, dil=2))
        add(_conv("c3", "c2", 24, 8, 9, rng, stride=2))
        add(_conv("c4", "c3", 8, 8, 5, rng, stride=3, pad=2))
        out = "c4"
    elif kind == "elementwise":  # concat in place, MUL and SUB of feature maps
        add(_conv("a", out, 16, 8, 1, rng))
        add(_conv("b", out, 16, 12, 3, rng))
        nodes.append(helper.make_node("Concat", ["a", "b"], ["cat"], axis=1))
        nodes.append(helper.make_node("Mul", ["cat", "cat"], ["sq"]))
        nodes.append(helper.make_node("Sub", ["sq", "cat"], ["df"]))
        out = "df"
    elif kind == "resize":  # IFM upscaling (nearest)
        inits["scales"] = np.array([1, 1, 2, 2], np.float32)
        nodes.append(helper.make_node("Resize", [out, "", "scales"], ["up"], mode="nearest"))
        add(_conv("c2", "up", 16, 8, 3, rng))
        out = "c2"
    elif kind in ("head", "softmax"):  # MEAN as depthwise + int32 MUL, fully connected
        nodes.append(helper.make_node("GlobalAveragePool", [out], ["gp"]))
        nodes.append(helper.make_node("Flatten", ["gp"], ["fl"], axis=1))
        inits["fc.w"] = (rng.standard_normal((10, 16)) * 0.3).astype(np.float32)
        inits["fc.b"] = (rng.standard_normal(10) * 0.1).astype(np.float32)
        nodes.append(helper.make_node("Gemm", ["fl", "fc.w", "fc.b"], ["fc"], transB=1))
        out = "fc"
        if kind == "softmax":
            nodes.append(helper.make_node("Softmax", ["fc"], ["sm"], axis=1))
            out = "sm"
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])]
    graph = helper.make_graph(nodes, kind, inputs, [], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 18)])
    model.ir_version = 9
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output.extend(vi for vi in inferred.graph.value_info if vi.name == out)
    return model


def _check(kind: str, target: str, tmp_path: Path) -> None:
    source = tmp_path / f"{kind}.onnx"
    onnx.save(_build(kind), str(source))
    optimize(source, target, outdir=tmp_path / "out", require_fit=False, npu_format="tflite")  # vs the int8 TFLite
    vela, int8 = tmp_path / "out" / f"{kind}_vela.tflite", tmp_path / "out" / f"{kind}_int8.tflite"
    model = container.load(vela)
    assert [op.opcode for op in model.ops] == ["ethos-u"]
    t = model.tensors[model.inputs[0]]
    for seed in range(2):
        x = np.random.default_rng(seed).integers(-128, 128, size=t.shape, dtype=np.int8)
        result = compare_with_reference(vela, int8, {t.name: x})
        assert result.bit_exact, result.first_divergence


@pytest.mark.parametrize("kind", ["pool", "activations", "kernels", "elementwise", "resize", "head"])
def test_op_family_bit_exact_u65(kind: str, tmp_path: Path) -> None:
    _check(kind, "ethos-u65-256", tmp_path)


@pytest.mark.parametrize("kind", ["pool", "activations", "kernels"])
def test_op_family_bit_exact_u55(kind: str, tmp_path: Path) -> None:
    _check(kind, "ethos-u55-128", tmp_path)


def test_softmax_bit_exact(tmp_path: Path) -> None:
    """Vela's int8 SOFTMAX: a 32-bit exp LUT, CLZ/SHL normalisation, Newton-Raphson in 32-bit MULs."""
    _check("softmax", "ethos-u65-256", tmp_path)
