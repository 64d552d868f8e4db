"""merge-convs rule of substitute-blocks: consecutive linear convs -> one conv, exact under ORT, and refused
where the padding makes it inexact. A stand-in oracle charging per node accepts every merge; one test lets
Vela decide a bottleneck it should keep."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from nirc.passes.substitute_blocks import SubstituteBlocksPass
from nirc_testing import assert_same_function, ops, parse

from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
TARGET = load_registry().get_target("ethos-u65")


@dataclass(frozen=True)
class FakeCost:
    cycles: int
    weight_bytes: int = 0
    cpu_ops: int = 0


def per_node(proto: onnx.ModelProto, target: object) -> FakeCost:
    return FakeCost(cycles=1000 * len(proto.graph.node))


def _w(*shape: int, seed: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _run(proto: onnx.ModelProto, cost_fn: object = per_node) -> tuple[IRModel, bool, SubstituteBlocksPass]:
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("merge-convs",), cost_fn=cost_fn)  # type: ignore[arg-type]
    changed = pass_.run(model, PassContext(target=TARGET))
    return model, changed, pass_


def _pair(
    first: str, second: str, cin: int, cmid: int, cout: int, hw: int, out_hw: int, **weights: np.ndarray
) -> onnx.ModelProto:
    return parse(
        HEADER
        + f"""
    g (float[1,{cin},{hw},{hw}] x) => (float[1,{cout},{out_hw},{out_hw}] y) {{
        t = {first}
        y = {second}
    }}""",
        **weights,
    )


K1 = "Conv <kernel_shape = [1, 1]>"
K3 = "Conv <kernel_shape = [3, 3]>"
K3P = "Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]>"
K3S2 = "Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]>"
K1S2 = "Conv <kernel_shape = [1, 1], strides = [2, 2]>"

# first, second, cin, cmid, cout, hw, out_hw, weight shapes
CASES = {
    # 1x1 -> 1x1, both with bias
    "1x1-1x1": (f"{K1} (x, wa, ba)", f"{K1} (t, wb, bb)", 8, 4, 8, 6, 6,
                {"wa": (4, 8, 1, 1), "ba": (4,), "wb": (8, 4, 1, 1), "bb": (8,)}),
    # 1x1 without bias -> padded 3x3: the zero border of the 1x1's output is the 1x1 of a zero border
    "1x1-3x3pad": (f"{K1} (x, wa)", f"{K3P} (t, wb, bb)", 8, 4, 6, 6, 6,
                   {"wa": (4, 8, 1, 1), "wb": (6, 4, 3, 3), "bb": (6,)}),
    # 1x1 with bias -> unpadded 3x3
    "1x1b-3x3": (f"{K1} (x, wa, ba)", f"{K3} (t, wb)", 8, 4, 6, 6, 4,
                 {"wa": (4, 8, 1, 1), "ba": (4,), "wb": (6, 4, 3, 3)}),
    # padded strided 3x3 -> 1x1
    "3x3s2-1x1": (f"{K3S2} (x, wa, ba)", f"{K1} (t, wb, bb)", 4, 8, 6, 8, 4,
                  {"wa": (8, 4, 3, 3), "ba": (8,), "wb": (6, 8, 1, 1), "bb": (6,)}),
    # 3x3 -> unpadded 3x3 gives a 5x5
    "3x3-3x3": (f"{K3P} (x, wa, ba)", f"{K3} (t, wb, bb)", 4, 4, 4, 8, 6,
                {"wa": (4, 4, 3, 3), "ba": (4,), "wb": (4, 4, 3, 3), "bb": (4,)}),
    # pointwise -> depthwise (unbiased 1x1, padded depthwise)
    "pw-dw": (f"{K1} (x, wa)", "Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 8> (t, wb, bb)",
              4, 8, 8, 6, 6,
              {"wa": (8, 4, 1, 1), "wb": (8, 1, 3, 3), "bb": (8,)}),
    # depthwise -> depthwise stays depthwise
    "dw-dw": ("Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (x, wa, ba)",
              "Conv <kernel_shape = [3, 3], group = 4> (t, wb, bb)", 4, 4, 4, 8, 6,
              {"wa": (4, 1, 3, 3), "ba": (4,), "wb": (4, 1, 3, 3), "bb": (4,)}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_pair_merges_exactly(case: str) -> None:
    first, second, cin, cmid, cout, hw, out_hw, shapes = CASES[case]
    weights = {k: _w(*s, seed=i) for i, (k, s) in enumerate(sorted(shapes.items()))}
    proto = _pair(first, second, cin, cmid, cout, hw, out_hw, **weights)
    model, changed, pass_ = _run(proto)
    assert changed and ops(model) == {"Conv": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    assert pass_.decisions[0].chosen == "merged"
    if case == "dw-dw":
        assert next(iter(model.graph.nodes)).attrs["group"] == 4
    assert not SubstituteBlocksPass(rules=("merge-convs",), cost_fn=per_node).run(model, PassContext(target=TARGET))


def test_chain_of_three_with_batchnorm_between_merges_to_one() -> None:
    rng = np.random.default_rng(9)
    proto = parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        an = BatchNormalization (a, g, b, m, v)
        c = Conv <kernel_shape = [1, 1]> (an, w2)
        y = Conv <kernel_shape = [1, 1]> (c, w3, b3)
    }""",
        w1=_w(8, 4, 1, 1, seed=1),
        b1=_w(8, seed=2),
        w2=_w(8, 8, 1, 1, seed=3),
        w3=_w(4, 8, 1, 1, seed=4),
        b3=_w(4, seed=5),
        g=rng.uniform(0.5, 1.5, 8).astype(np.float32),
        b=rng.normal(0, 0.1, 8).astype(np.float32),
        m=rng.normal(0, 0.1, 8).astype(np.float32),
        v=rng.uniform(0.5, 1.5, 8).astype(np.float32),
    )
    model, changed, pass_ = _run(proto)
    assert changed and ops(model) == {"Conv": 1}
    assert sum(d.chosen is not None for d in pass_.decisions) == 2
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("first", "second", "reason"),
    [
        (f"{K1} (x, wa, ba)", f"{K3P} (t, wb)", "bias"),  # the 1x1's bias would leak into the border
        (f"{K3P} (x, wa)", f"{K3P} (t, wb)", "padded"),  # the first conv's output border is not zero
        (f"{K1S2} (x, wa)", f"{K1S2} (t, wb)", "stride"),  # merged stride 4 is beyond the NPU
    ],
)
def test_inexact_or_unsupported_merges_are_refused(first: str, second: str, reason: str) -> None:
    k1 = 3 if "[3, 3]" in first else 1
    k2 = 3 if "[3, 3]" in second else 1
    out_hw = 2 if "strides" in first else 8
    proto = _pair(
        first, second, 4, 4, 4, 8, out_hw, wa=_w(4, 4, k1, k1, seed=1), ba=_w(4, seed=2), wb=_w(4, 4, k2, k2, seed=3)
    )
    model, changed, pass_ = _run(proto)
    assert not changed and ops(model) == {"Conv": 2}
    (decision,) = pass_.decisions
    assert decision.chosen is None and reason in decision.reason


def test_nonlinearity_between_is_not_a_match() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
        a = Conv <kernel_shape = [1, 1]> (x, w1)
        r = Relu (a)
        y = Conv <kernel_shape = [1, 1]> (r, w2)
    }""",
        w1=_w(4, 4, 1, 1, seed=1),
        w2=_w(4, 4, 1, 1, seed=2),
    )
    _model, changed, pass_ = _run(proto)
    assert not changed and not pass_.decisions


def test_vela_keeps_a_bottleneck_whose_merge_costs_more() -> None:
    """64 -> 8 -> 64 1x1 convs: the merged 64x64 conv has 4x the MACs; Vela says no."""
    weights = {"wa": _w(8, 64, 1, 1, seed=1), "ba": _w(8, seed=2), "wb": _w(64, 8, 1, 1, seed=3), "bb": _w(64, seed=4)}
    proto = _pair(f"{K1} (x, wa, ba)", f"{K1} (t, wb, bb)", 64, 8, 64, 16, 16, **weights)
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("merge-convs",))
    assert not pass_.run(model, PassContext(target=TARGET))
    (decision,) = pass_.decisions
    assert decision.before is not None and decision.candidates[0].cost is not None
    assert decision.candidates[0].cost.cycles >= decision.before.cycles
    assert decision.chosen is None
