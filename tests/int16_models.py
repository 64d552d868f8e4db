"""Small ONNX models on which int8 activations are measurably too lossy (shared by the int16 tests)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def outlier_model(tail: str | None = None) -> onnx.ModelProto:
    """x [1,8,12,12] -> conv -> t (one channel 100x the others) -> 1x1 conv + ReLU -> y [-> tail -> s].

    t's int8 step is set by the outlier channel, so the 15 small channels get a few levels each:
    the case 16-bit activations are for. The 1x1 conv reads only the small channels. ``tail``: an
    op type (e.g. ``Softmax``) applied to y as the graph output ``s``.
    """
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    w1[0] *= 100.0
    w2 = (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)
    w2[:, 0] = 0.0
    inits = {"w1": w1, "b1": np.zeros(16, np.float32), "w2": w2, "b2": np.full(8, 0.1, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["t"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["t", "w2", "b2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    if tail is not None:
        nodes.append(helper.make_node(tail, ["y"], ["s"], **({"axis": 1} if tail == "Softmax" else {})))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("s" if tail else "y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
