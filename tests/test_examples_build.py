"""Tests for examples/build_models.py, the generator of the seed benchmark models.

The benchmark numbers nirc reports are only comparable with the seed's if the rebuilt architectures are the
same, so MACs and params are recomputed here *independently* of the module's own counter -- from the
tensor shapes onnxruntime actually produces -- and compared with the seed's reference figures.  Byte-level
determinism is tested because benchmark artefacts and the shipped ``examples/tiny_cnn.onnx`` are compared
by hash.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = [
    "vgg19_cifar100",
    "resnet50_cifar100",
    "mobilenetv1_cifar100",
    "vgg19_224_10",
    "mobilenetv2_224",
    "tiny_cnn",
]
NUM_CLASSES = {
    "vgg19_cifar100": 100,
    "resnet50_cifar100": 100,
    "mobilenetv1_cifar100": 100,
    "vgg19_224_10": 10,
    "mobilenetv2_224": 1000,
    "tiny_cnn": 10,
}


@pytest.fixture(scope="module")
def bm() -> ModuleType:
    """examples/build_models.py is a script, not part of nirc; examples/ is on the test path."""
    import build_models

    return build_models


def _ort_profile(model: onnx.ModelProto, x: np.ndarray) -> tuple[dict[str, np.ndarray], int, int]:
    """Run ORT with every Conv/Gemm output exposed; return (outputs, MACs, params) from real shapes.

    Params are counted the other way round from the module: every float initializer, minus BN running
    statistics and minus tensors that only feed Clip (the ReLU6 bounds), which are not learnable.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    compute = [n for n in probe.graph.node if n.op_type in ("Conv", "Gemm")]
    for node in compute:
        if node.output[0] not in existing:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {model.graph.input[0].name: x}), strict=True))

    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    macs = 0
    for node in compute:
        out_shape = outputs[node.output[0]].shape
        w_shape = weights[node.input[1]]
        if node.op_type == "Conv":  # Cout*Hout*Wout * (Cin/groups)*kh*kw, times the batch of 1
            macs += math.prod(out_shape) * math.prod(w_shape[1:])
        else:  # Gemm with transB=1: rows * in * out
            macs += out_shape[0] * math.prod(w_shape)

    consumers: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, set()).add((node.op_type, i))
    params = 0
    for tensor in model.graph.initializer:
        uses = consumers.get(tensor.name, set())
        running_stat = any(op == "BatchNormalization" and i >= 3 for op, i in uses)
        clip_bound = bool(uses) and all(op == "Clip" for op, _ in uses)
        if not (running_stat or clip_bound):
            params += math.prod(tensor.dims)
    return outputs, macs, params


def _input_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_model_registry(bm: Any) -> None:
    assert list(bm.MODELS) == NAMES
    assert set(bm.REFERENCE) <= set(bm.MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        bm.build("resnet18")


@pytest.mark.parametrize("name", NAMES)
def test_model(bm: Any, name: str, record_property: Any) -> None:
    model = bm.build(name)
    data = model.SerializeToString()
    assert bm.build(name).SerializeToString() == data, "two builds differ: weights are not deterministic"
    onnx.checker.check_model(model, full_check=True)

    # The shape of a PyTorch eval-mode export, which is what nirc's import passes must digest.
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)
    consumers = {i: n for n in model.graph.node for i in n.input}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert len(node.input) == 2, f"{node.name}: conv bias should live in the following BN"
            assert consumers[node.output[0]].op_type == "BatchNormalization", node.name
    assert model.graph.output[0].name == "logits"

    shape = _input_shape(model)
    assert shape[:2] == [1, 3]
    rng = np.random.default_rng(0)
    x0, x1 = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    outputs, macs, params = _ort_profile(model, x0)
    logits = outputs["logits"]
    assert logits.shape == (1, NUM_CLASSES[name])

    # Random weights must keep activations in a range where int8 quantization is meaningful.
    for tensor_name, value in outputs.items():
        assert np.isfinite(value).all(), tensor_name
        assert 1e-2 < float(value.std()) < 50.0, f"{tensor_name}: std {value.std():.3g}"
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (logits1,) = session.run(None, {"input": x1})
    np.testing.assert_allclose(session.run(None, {"input": x0})[0], logits, rtol=1e-4, atol=1e-4)
    assert not np.allclose(logits1, logits, atol=1e-3), "logits do not depend on the input"

    assert (macs, params) == tuple(bm.count_macs_params(model)), "module counter disagrees with ORT shapes"
    record_property("macs", macs)
    record_property("params", params)
    ref_macs, ref_params = bm.REFERENCE.get(name, (None, None))
    report = (
        f"{name}: {macs / 1e6:.1f} M MACs (ref {ref_macs}), {params / 1e6:.3f} M params (ref {ref_params})"
    )
    print(report)
    if ref_macs is not None:
        assert abs(macs - ref_macs) <= 0.01 * ref_macs, report
    if ref_params is not None:
        assert abs(params - ref_params) <= 0.01 * ref_params, report


def test_shipped_tiny_cnn_is_current(bm: Any) -> None:
    shipped = (EXAMPLES / "tiny_cnn.onnx").read_bytes()
    assert len(shipped) < 200 * 1024
    assert shipped == bm.build("tiny_cnn").SerializeToString(), (
        "examples/tiny_cnn.onnx is stale: run `python examples/build_models.py -o examples tiny_cnn`"
    )


def test_cli_writes_files_and_table(bm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bm.main(["-o", str(tmp_path), "tiny_cnn", "mobilenetv1_cifar100"]) == 0
    for name in ("tiny_cnn", "mobilenetv1_cifar100"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == bm.build(name).SerializeToString()
    table = capsys.readouterr().out
    assert "mobilenetv1_cifar100" in table and "46.4" in table and "3.309" in table
    with pytest.raises(SystemExit):
        bm.main(["-o", str(tmp_path), "no_such_model"])
