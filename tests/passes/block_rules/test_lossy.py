"""Lossy rules of substitute-blocks (allow_lossy=True): structure of each replacement, the least-squares
fit (exact where the structure can represent the block), the measured accuracy cost and the max_error gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from nirc.passes.substitute_blocks import SubstituteBlocksPass
from nirc_testing import ops, ort_run, parse

from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.plugin import load_registry
from nirc.quant import CalibrationSet

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
TARGET = load_registry().get_target("ethos-u65")


@dataclass(frozen=True)
class FakeCost:
    cycles: int
    weight_bytes: int = 0
    cpu_ops: int = 0


def per_node(proto: onnx.ModelProto, target: object) -> FakeCost:
    return FakeCost(cycles=1000 * len(proto.graph.node))


def anti_node(proto: onnx.ModelProto, target: object) -> FakeCost:
    return FakeCost(cycles=10**6 - len(proto.graph.node))


def _w(*shape: int, seed: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (np.random.default_rng(seed).standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def mbconv(c: int = 8, e: int = 24, hw: int = 8) -> onnx.ModelProto:
    """MobileNetV2 inverted bottleneck with ReLU6 and a residual Add."""
    return parse(
        HEADER
        + f"""
    g (float[1,{c},{hw},{hw}] x) => (float[1,{c},{hw},{hw}] y) {{
        a = Conv <kernel_shape = [1, 1]> (x, we, be)
        a6 = Clip (a, lo, hi)
        d = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = {e}> (a6, wd, bd)
        d6 = Clip (d, lo, hi)
        p = Conv <kernel_shape = [1, 1]> (d6, wp, bp)
        y = Add (x, p)
    }}""",
        we=_w(e, c, 1, 1, seed=1),
        be=_w(e, seed=2) * 0.1,
        wd=_w(e, 1, 3, 3, seed=3),
        bd=_w(e, seed=4) * 0.1,
        wp=_w(c, e, 1, 1, seed=5) * 0.5,
        bp=_w(c, seed=6) * 0.1,
        lo=np.array(0.0, np.float32),
        hi=np.array(6.0, np.float32),
    )


def fused(c: int = 8, e: int = 24, hw: int = 8) -> onnx.ModelProto:
    return parse(
        HEADER
        + f"""
    g (float[1,{c},{hw},{hw}] x) => (float[1,{c},{hw},{hw}] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wf, bf)
        a6 = Relu (a)
        y = Conv <kernel_shape = [1, 1]> (a6, wp, bp)
    }}""",
        wf=_w(e, c, 3, 3, seed=1),
        bf=_w(e, seed=2) * 0.1,
        wp=_w(c, e, 1, 1, seed=3),
        bp=_w(c, seed=4) * 0.1,
    )


def _run(
    proto: onnx.ModelProto, rule: str, cost_fn: object = per_node, calibration: object = None, **options: object
) -> tuple[IRModel, bool, SubstituteBlocksPass, PassContext]:
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(allow_lossy=True, rules=(rule,), cost_fn=cost_fn, **options)  # type: ignore[arg-type]
    ctx = PassContext(target=TARGET, calibration=calibration)  # type: ignore[arg-type]
    return model, pass_.run(model, ctx), pass_, ctx


def _rel_error(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 11) -> float:
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in before.graph.input[0].type.tensor_type.shape.dim]
    num = den = 0.0
    for _ in range(4):
        x = rng.standard_normal(shape).astype(np.float32)
        (ref,) = ort_run(before, {"x": x})
        (got,) = ort_run(after, {"x": x})
        num += float(np.sum((got - ref) ** 2))
        den += float(np.sum(ref**2))
    return float(np.sqrt(num / den))


def test_inverted_bottleneck_is_fused_and_its_error_measured() -> None:
    proto = mbconv()
    model, changed, pass_, ctx = _run(proto, "fuse-inverted-bottleneck", max_error=1.0, samples=12)
    assert changed and not pass_.is_exact
    assert ops(model) == {"Conv": 2, "Clip": 1, "Add": 1}
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    assert conv.attrs["kernel_shape"] == [3, 3] and conv.attrs["group"] == 1
    (decision,) = pass_.decisions
    (cand,) = decision.candidates
    assert not cand.exact and cand.accuracy is not None
    assert set(cand.accuracy) == {"block_rel_error", "output_rel_error", "output_snr_db"}
    assert ctx.stats["synthetic_calibration"] == 1
    # The refit reproduces the block far better than chance, and the recorded error is what ORT measures.
    measured = _rel_error(proto, model.to_proto())
    assert measured < 0.5
    assert cand.accuracy["output_rel_error"] == pytest.approx(measured, rel=0.2)


def test_unfuse_builds_the_depthwise_form() -> None:
    proto = fused()
    model, changed, pass_, _ = _run(proto, "unfuse-inverted-bottleneck", cost_fn=anti_node, max_error=10.0)
    assert changed
    assert ops(model) == {"Conv": 3, "Relu": 2}
    dw = [n for n in model.graph.nodes if n.op == "Conv" and n.attrs.get("group", 1) > 1]
    assert len(dw) == 1 and dw[0].attrs["group"] == 24
    (decision,) = pass_.decisions
    assert decision.candidates[0].accuracy is not None


def test_5x5_factorises_into_two_3x3_exactly_when_wide_enough() -> None:
    """With 9 * Cin <= width the first 3x3 keeps every patch direction, so the least-squares fit is exact."""
    proto = parse(
        HEADER
        + """
    g (float[1,2,10,10] x) => (float[1,18,10,10] y) {
        y = Conv <kernel_shape = [5, 5], pads = [2, 2, 2, 2]> (x, w, b)
    }""",
        w=_w(18, 2, 5, 5, seed=1),
        b=_w(18, seed=2),
    )
    model, changed, _, _ = _run(proto, "factorize-kernel", cost_fn=kernel_taps, max_error=0.05, samples=24)
    assert changed
    assert ops(model) == {"Conv": 2}
    assert all(n.attrs["kernel_shape"] == [3, 3] for n in model.graph.nodes)
    assert _rel_error(proto, model.to_proto()) < 1e-3


def kernel_taps(proto: onnx.ModelProto, target: object) -> FakeCost:
    """Cheaper with fewer kernel taps summed over convs (two 3x3 = 18 < one 5x5 = 25)."""
    taps = [a.ints[0] * a.ints[1] for n in proto.graph.node for a in n.attribute if a.name == "kernel_shape"]
    return FakeCost(cycles=sum(taps))


def test_candidate_over_max_error_is_rejected_before_costing() -> None:
    proto = mbconv()
    model, changed, pass_, _ = _run(proto, "fuse-inverted-bottleneck", max_error=1e-9)
    assert not changed and ops(model) == ops(IRModel.load(proto))
    (decision,) = pass_.decisions
    (cand,) = decision.candidates
    assert cand.rejected is not None and "max_error" in cand.rejected and cand.cost is None
    assert decision.chosen is None


def test_oracle_veto_keeps_the_depthwise_block() -> None:
    _model, changed, pass_, _ = _run(mbconv(), "fuse-inverted-bottleneck", cost_fn=anti_node, max_error=1.0)
    assert not changed and pass_.decisions[0].chosen is None


def test_calibration_from_the_context_is_used() -> None:
    rng = np.random.default_rng(3)
    samples = tuple({"x": np.abs(rng.standard_normal((1, 8, 8, 8))).astype(np.float32)} for _ in range(8))
    calib = CalibrationSet(samples=samples, synthetic=False, source="test")
    _, changed, _, ctx = _run(mbconv(), "fuse-inverted-bottleneck", calibration=calib, max_error=1.0)
    assert changed and "synthetic_calibration" not in ctx.stats


def test_lossy_rules_need_allow_lossy() -> None:
    with pytest.raises(ValueError, match="allow_lossy"):
        SubstituteBlocksPass(rules=("factorize-kernel",))
    assert SubstituteBlocksPass().is_exact and not SubstituteBlocksPass(allow_lossy=True).is_exact
    exact_only = SubstituteBlocksPass(allow_lossy=True, rules=("reparam",))
    assert exact_only.is_exact


def test_fused_blocks_are_not_unfused_in_the_same_run() -> None:
    """Both directions enabled: a block the pass just fused is never a candidate for unfusing (no ping-pong)."""
    model = IRModel.load(mbconv())
    pass_ = SubstituteBlocksPass(
        allow_lossy=True,
        rules=("fuse-inverted-bottleneck", "unfuse-inverted-bottleneck"),
        cost_fn=per_node,
        max_error=1.0,
    )
    assert pass_.run(model, PassContext(target=TARGET))
    assert [d.rule for d in pass_.decisions] == ["fuse-inverted-bottleneck"]
