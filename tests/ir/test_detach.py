"""Front-door tools on a model without its large weights: the same canonical model, less memory."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nirc import timing
from nirc.errors import ModelLoadError
from nirc.ir import detach
from nirc.ir.load import canonicalize


def _mlp(opset: int, width: int = 768, bad: bool = False) -> onnx.ModelProto:
    """Two Gemms with 2.25 MiB weights each (detached), a small bias and a ReduceMean the opset converter rewrites."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((width, width)).astype(np.float32)
    if bad:
        w0[3, 5] = np.nan
    inits = [
        numpy_helper.from_array(w0, "w0"),
        numpy_helper.from_array(np.zeros(width, np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w1"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=1, name="g0"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w1"], ["m"], name="mm"),
        helper.make_node("ReduceMean", ["m"], ["y"], axes=[1], keepdims=1, name="mean"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_detached_canonicalization_is_byte_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    source = _mlp(13)
    light, detached = detach.detach_weights(source)
    assert {t.name for t in detached.heavy} == {"w0", "w1"} and [t.name for t in light.graph.initializer] == ["b0"]
    assert {v.name for v in light.graph.input} == {"x", "w0", "w1"}
    result, _ = canonicalize(source)
    monkeypatch.setattr(detach, "DETACH_BYTES", 1 << 40)  # nothing detached: the tools see every weight
    whole, _ = canonicalize(source)
    assert result.SerializeToString(deterministic=True) == whole.SerializeToString(deterministic=True)
    assert [t.name for t in result.graph.initializer] == ["w0", "b0", "w1"]  # the input's order
    assert [v.name for v in result.graph.input] == ["x"]
    assert any(n.op_type == "ReduceMean" and len(n.input) == 2 for n in result.graph.node)  # converted to 18
    assert len(source.graph.initializer) == 3 and source.graph.input[0].name == "x"  # the caller's proto as it was


def test_detached_weights_are_still_checked_for_nan() -> None:
    with pytest.raises(ModelLoadError, match="'w0' has 1 NaN"):
        canonicalize(_mlp(13, bad=True))


def test_loading_holds_less_than_three_times_the_weights() -> None:
    """Measured with the kernel's high-water mark: the checker, converter and inference see no weights."""
    source = _mlp(13, width=2048).SerializeToString()  # 32 MiB of weights
    weights = 2 * 2048 * 2048 * 4
    if not timing.reset_peak_rss():
        pytest.skip("no resettable RSS high-water mark here")
    start = timing.peak_rss_bytes()
    model, _ = canonicalize(source)
    grown = timing.peak_rss_bytes() - start
    assert grown < 3 * weights, grown / weights
    del model


def test_an_initializer_also_declared_as_input_stays_an_input() -> None:
    source = _mlp(13)
    source.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [768, 768]))
    result, _ = canonicalize(source)
    assert [v.name for v in result.graph.input] == ["x", "w1"]
    assert [t.name for t in result.graph.initializer] == ["w0", "b0", "w1"]
