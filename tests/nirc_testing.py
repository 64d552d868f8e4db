"""Shared test helpers: build models from ONNX text, run passes, compare with ORT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.quant.calibration import CalibrationSet


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


def conv_silu_then(tail: str, out_shape: str, size: int, seed: int) -> onnx.ModelProto:
    """A 1x1 conv 16 -> 32 at ``size`` x ``size``, SiLU, then ``tail`` (ONNX text reading ``a``, writing ``y``)."""
    rng = np.random.default_rng(seed)
    proto = parse(
        '<ir_version: 9, opset_import: ["" : 18]>'
        + f"""g (float[1,16,{size},{size}] x) => (float{out_shape} y) {{
            c = Conv (x, w, b)
            s = Sigmoid (c)
            a = Mul (c, s)
            {tail}
        }}""",
        w=(rng.standard_normal((32, 16, 1, 1)) * 0.3).astype(np.float32),
        b=(rng.standard_normal(32) * 0.1).astype(np.float32),
    )
    return IRModel.load(proto).to_proto()


def trained_digits() -> tuple[onnx.ModelProto, CalibrationSet, list[dict[str, np.ndarray]]]:
    """The trained digits CNN after the exact (no-hw) passes, its 16 calibration samples and 128 held-out digits."""
    from pathlib import Path

    from nirc.backend import input_shapes
    from nirc.pass_manager import PassManager
    from nirc.pipeline import select_passes
    from nirc.plugin import load_registry
    from nirc.quant import load_calibration

    examples = Path(__file__).resolve().parents[1] / "examples"
    registry = load_registry()
    target = registry.get_target("ethos-u65")
    model = IRModel.load(examples / "digits_cnn.onnx")
    PassManager(select_passes(registry, target, no_hw_passes=True)).run(model, PassContext(target=target))
    proto = model.to_proto()
    shapes = input_shapes(proto)
    calib = load_calibration(examples / "digits_calib.npz", shapes, count=16)
    val = list(load_calibration(examples / "digits_val.npz", shapes, count=128).samples)
    return proto, calib, val


def moved_initializers(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Initializers whose values differ between two versions of a model: name -> (before, after)."""
    from onnx import numpy_helper

    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    return {n: (old[n], new[n]) for n in old if n in new and not np.array_equal(old[n], new[n])}
