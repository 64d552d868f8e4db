"""Running a whole Vela model: ethos-u ops and the CPU ops between them, in graph order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from mutation_helpers import Artifact, compile_example, feeds
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.sim.validate import validate_artifact
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from nirc.errors import BackendError
from nirc.pipeline import optimize


def _residual_around_a_cpu_island() -> onnx.ModelProto:
    """``y = conv(s / (relu(s) + 1)) + r`` with ``s = conv(r)``: the DIV runs on the CPU, ``r`` waits across it.

    Only NPU ops read ``r``, so Vela keeps it in the shared scratch tensor rather than
    passing it to the second ethos-u op as an input.
    """
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
        "w2": rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.2,
        "w3": rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.2,
        "one": np.float32(1.0),
    }
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["r"], pads=[1, 1, 1, 1]),
        h.make_node("Conv", ["r", "w3"], ["s"]),
        h.make_node("Relu", ["s"], ["p"]),
        h.make_node("Add", ["p", "one"], ["d"]),
        h.make_node("Div", ["s", "d"], ["q"]),
        h.make_node("Conv", ["q", "w2"], ["c"]),
        h.make_node("Add", ["c", "r"], ["y"]),
    ]
    graph = h.make_graph(
        nodes,
        "residual_island",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])],
        [nh.from_array(np.asarray(v), k) for k, v in weights.items()],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def test_a_tensor_live_across_a_cpu_op_is_read_back_from_the_shared_scratch(tmp_path: Path) -> None:
    """The device's scratch tensor is one buffer for every ethos-u op; the sim keeps it across them.

    With fresh scratch per ethos-u op, the residual ADD read garbage: 202 LSB here, and
    EfficientViT-B0 (linear attention on the CPU) failed validation the same way.
    """
    source = tmp_path / "residual_island.onnx"
    onnx.save(_residual_around_a_cpu_island(), source)
    out = tmp_path / "o"
    optimize(source, "ethos-u65-256", outdir=out, npu_format="tflite", validate_npu="none", accuracy=False)
    vela, int8 = out / "residual_island_vela.tflite", out / "residual_island_int8.tflite"
    model = container.load(vela)
    calls = [model.npu_calls[i] for i in sorted(model.npu_calls)]
    assert len(calls) == 2, "the DIV should split the graph into two ethos-u ops"
    second_inputs = {model.tensors[i].name for i in calls[1].ifms}
    assert "r" not in second_inputs, "r must reach the second ethos-u op through the scratch, not as an input"
    result = validate_artifact(vela, int8, feeds(int8, 3))
    assert result.bit_exact, result.first_divergence


@pytest.mark.parametrize("name", ["tiny_cnn", "lut_cnn", "wide_cnn"])
def test_ethos_u65_512_runs_two_weight_streams_and_is_bit_exact(tmp_path: Path, name: str) -> None:
    """Two 256-MAC cores: every conv carries a second weight and scale stream (odd output channels).

    The clean artifact matches TFLite Micro bit for bit; one flipped byte in the second core's
    weight stream is found (so the second stream is really decoded, not ignored).
    """
    vela, int8 = compile_example(name, tmp_path / "out", target="ethos-u65-512")
    clean = validate_artifact(vela, int8, feeds(vela, 2))
    assert clean.bit_exact, clean.first_divergence
    artifact = Artifact.load(vela)
    dual = [op for op in artifact.convs() if op.weights1 is not None and op.weights1.length]
    assert dual, "no operation with a second weight stream"
    op = dual[0]
    assert op.weights1 is not None
    at = artifact.blob_at + artifact.blob_offset(op, op.weights1) + op.weights1.length // 2
    bad = artifact.patched(at, bytes([artifact.data[at] ^ 0x10]))
    try:
        broken = validate_artifact(bad, int8, feeds(bad, 2))
    except BackendError:  # a corrupted stream may no longer decode: also a failure, named
        return
    assert not broken.bit_exact
