from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.equalize_cross_layer import EqualizeCrossLayerPass
from nirc_testing import assert_same_function, ops, parse, run_pass

from nirc.accuracy import AccuracyGuard
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.quant import CalibrationSet

ALWAYS = EqualizeCrossLayerPass(mode="always")


def _separable(act: str = "Relu", extra_reader: bool = False, decades: float = 1.0) -> object:
    """stem conv -> act -> depthwise -> act -> pointwise -> act -> GAP -> Flatten -> Gemm, with channel ranges
    that differ by 100x across the depthwise channels (what trained MobileNets look like)."""
    rng = np.random.default_rng(0)
    spread = np.logspace(-decades, decades, 8).astype(np.float32)  # per-channel ranges 0.1 .. 10 by default
    inits: dict[str, np.ndarray] = {
        "w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b0": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b1": rng.standard_normal(8).astype(np.float32) * spread,
        "w2": rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * 0.3,
        "w3": rng.standard_normal((10, 16)).astype(np.float32) * 0.3,
        "b3": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    if act == "Clip":
        inits |= {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    activation = {"Relu": "Relu ({x})", "Clip": "Clip ({x}, lo, hi)"}[act]
    extra = ", float[1,8,8,8] a1" if extra_reader else ""
    text = f"""
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,3,8,8] x) => (float[1,10] y{extra}) {{
        c0 = Conv <pads = [1,1,1,1]> (x, w0, b0)
        a0 = {activation.format(x="c0")}
        c1 = Conv <pads = [1,1,1,1], group = 8> (a0, w1, b1)
        a1 = {activation.format(x="c1")}
        c2 = Conv (a1, w2)
        a2 = Relu (c2)
        p = GlobalAveragePool (a2)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w3, b3)
    }}
    """
    return parse(text, **inits)


def _depthwise_ranges(model: IRModel) -> np.ndarray:
    proto = model.to_proto()
    node = next(n for n in proto.graph.node if n.op_type == "Conv" and any(a.i == 8 for a in n.attribute))
    init = {i.name: i for i in proto.graph.initializer}
    from onnx import numpy_helper

    w = numpy_helper.to_array(init[node.input[1]])
    return np.asarray(np.abs(w).reshape(8, -1).max(axis=1))


def test_equalizes_separable_chain_exactly() -> None:
    proto = _separable()
    before = _depthwise_ranges(IRModel.load(proto))
    model, changed, ctx = run_pass(ALWAYS, proto)
    assert changed
    assert ops(model) == ops(proto)  # weights change, not the graph
    assert ctx.stats["pairs"] == 3  # stem -> dw, dw -> pw, pw -> Gemm (through ReLU, GAP, Flatten)
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)
    after = _depthwise_ranges(model)
    assert after.max() / after.min() < 0.2 * before.max() / before.min()


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(ALWAYS, _separable())
    _, changed, _ = run_pass(ALWAYS, model.to_proto())
    assert not changed


def test_refuses_relu6() -> None:
    """Clip(0, 6) is not homogeneous: (x / s) clipped at 6 is x clipped at 6 s, not at 6."""
    model, _, ctx = run_pass(ALWAYS, _separable(act="Clip"))
    assert ctx.stats["pairs"] == 1  # only pointwise -> Gemm (through ReLU, GAP, Flatten) is left
    assert_same_function(_separable(act="Clip"), model.to_proto(), rtol=1e-4, atol=1e-5)  # type: ignore[arg-type]


def test_refuses_tensor_with_another_reader() -> None:
    proto = _separable(extra_reader=True)
    model, _, ctx = run_pass(ALWAYS, proto)
    assert ctx.stats["pairs"] == 2  # a1 is a graph output: dw -> pw is not equalised
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)


def test_measured_mode_needs_calibration() -> None:
    _, changed, _ = run_pass(EqualizeCrossLayerPass(), _separable())
    assert not changed


def _guard(seed: int = 3) -> AccuracyGuard:
    rng = np.random.default_rng(seed)
    samples = tuple({"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8))
    return AccuracyGuard(CalibrationSet(samples, False, "test"), samples=8)


def test_measured_mode_keeps_only_an_int8_gain() -> None:
    proto = _separable()
    guard = _guard()
    model = IRModel.load(proto)
    ctx = PassContext(accuracy=guard)
    changed = EqualizeCrossLayerPass().run(model, ctx)
    (decision,) = ctx.decisions
    verdict = decision["accuracy_guard"]
    assert verdict["kept"] == changed
    assert changed == (verdict["snr_drop_db"] < 0)
    # Equalising a 100x channel spread under a per-tensor activation scale is a real int8 gain.
    assert changed, verdict
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)


def test_measured_mode_refuses_an_int8_loss() -> None:
    """A mild channel spread (2x each way): equalising costs this model int8 SNR, so the model stays as it was."""
    proto = _separable(decades=0.3)
    model = IRModel.load(proto)
    ctx = PassContext(accuracy=_guard())
    assert not EqualizeCrossLayerPass().run(model, ctx)
    (decision,) = ctx.decisions
    assert not decision["accuracy_guard"]["kept"]
    assert decision["accuracy_guard"]["snr_drop_db"] > 0
    assert ctx.stats["accuracy_guard.reverted"] == 1
    after = {i.name: i for i in model.to_proto().graph.initializer}
    assert all(after[i.name] == i for i in proto.graph.initializer)  # type: ignore[attr-defined]


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="mode"):
        EqualizeCrossLayerPass(mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_sweeps"):
        EqualizeCrossLayerPass(max_sweeps=0)
