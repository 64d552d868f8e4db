"""Running a whole Vela model: ethos-u ops and the CPU ops between them, in graph order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from mutation_helpers import feeds
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.sim.validate import validate_artifact
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

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
