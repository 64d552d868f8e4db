"""Shared test helpers: build models from ONNX text, run passes, compare with ORT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


def parse(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """An ONNX model from its text form, with numpy arrays as named initializers."""
    model = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(model)
    return model


def ops(model: onnx.ModelProto | IRModel) -> Counter[str]:
    proto = model.to_proto() if isinstance(model, IRModel) else model
    return Counter(n.op_type for n in proto.graph.node)


def run_pass(pass_: Pass, proto: onnx.ModelProto) -> tuple[IRModel, bool, PassContext]:
    model = IRModel.load(proto)
    ctx = PassContext()
    changed = pass_.run(model, ctx)
    return model, changed, ctx


def ort_run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(x) for x in session.run(None, feed)]


def assert_same_function(
    before: onnx.ModelProto, after: onnx.ModelProto, *, trials: int = 4, rtol: float = 1e-5, atol: float = 1e-5
) -> None:
    """ORT outputs agree on several seeded random inputs; ``after`` also passes the full checker."""
    onnx.checker.check_model(after, full_check=True)
    rng = np.random.default_rng(1234)
    inits = {i.name for i in before.graph.initializer}
    for _ in range(trials):
        feed = {
            i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in before.graph.input
            if i.name not in inits
        }
        for ref, got in zip(ort_run(before, feed), ort_run(after, feed), strict=True):
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)
