"""large-kernel rule of substitute-blocks: convs beyond Vela's stride/kernel limits decomposed exactly.

Vela 5.2 refuses a padded stride-4 conv outright (the oracle's "before" fails) and runs a stride-4
depthwise conv on the CPU; both get an NPU-only replacement. Checked with Vela on small shapes."""

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


def conv(c: int, co: int, hw: int, k: tuple[int, int], s: int, p: tuple[int, int], g: int = 1) -> onnx.ModelProto:
    ho = (hw + 2 * p[0] - k[0]) // s + 1
    wo = (hw + 2 * p[1] - k[1]) // s + 1
    w = np.random.default_rng(0).standard_normal((co, c // g, *k)) / np.sqrt(c // g * k[0] * k[1])
    b = np.random.default_rng(1).standard_normal(co) * 0.1
    return parse(
        HEADER
        + f"""
    g (float[1,{c},{hw},{hw}] x) => (float[1,{co},{ho},{wo}] y) {{
        a = Conv <kernel_shape = [{k[0]}, {k[1]}], pads = [{p[0]}, {p[1]}, {p[0]}, {p[1]}], strides = [{s}, {s}],
                  group = {g}> (x, w, b)
        y = Relu (a)
    }}""",
        w=w.astype(np.float32),
        b=b.astype(np.float32),
    )


def _run(proto: onnx.ModelProto, cost_fn: object = None) -> tuple[IRModel, bool, SubstituteBlocksPass]:
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("large-kernel",), cost_fn=cost_fn)  # type: ignore[arg-type]
    return model, pass_.run(model, PassContext(target=TARGET)), pass_


def test_padded_stride4_conv_that_vela_rejects_is_decomposed() -> None:
    proto = conv(16, 16, 32, (3, 3), 4, (1, 1))
    model, changed, pass_ = _run(proto)
    assert changed
    (decision,) = pass_.decisions
    assert decision.before is None and decision.before_error  # Vela cannot place the original
    assert {c.name for c in decision.candidates} == {"space-to-depth", "subsample"}
    assert all(c.cost is not None and getattr(c.cost, "cpu_ops", 0) == 0 for c in decision.candidates)
    assert "does not compile" in decision.reason
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    assert not SubstituteBlocksPass(rules=("large-kernel",)).run(model, PassContext(target=TARGET))


@pytest.mark.parametrize("name", ["space-to-depth", "subsample"])
@pytest.mark.parametrize(
    ("k", "s", "p"), [((3, 3), 4, (1, 1)), ((5, 5), 6, (2, 2)), ((4, 4), 4, (0, 0)), ((3, 5), 4, (1, 2))]
)
def test_each_stride_candidate_is_exact(name: str, k: tuple[int, int], s: int, p: tuple[int, int]) -> None:
    proto = conv(4, 8, 24, k, s, p)

    marker = {"space-to-depth": "_s2d", "subsample": "_sub"}[name]

    def only(proto: onnx.ModelProto, target: object) -> FakeCost:
        return FakeCost(cycles=1 if any(marker in n.name for n in proto.graph.node) else 10)

    model, changed, pass_ = _run(proto, only)
    assert changed and pass_.decisions[0].chosen == name
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


def test_depthwise_stride4_leaves_the_cpu() -> None:
    proto = conv(16, 16, 32, (3, 3), 4, (1, 1), g=16)
    model, changed, pass_ = _run(proto)
    assert changed
    (decision,) = pass_.decisions
    assert decision.before is not None and getattr(decision.before, "cpu_ops", 0) == 1
    assert decision.chosen == "subsample"  # space-to-depth is offered for dense convs only
    assert "CPU" in decision.reason
    assert ops(model) == {"Conv": 1, "MaxPool": 1, "Relu": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


def test_kernel_taller_than_64_rows_is_split_into_bands() -> None:
    proto = conv(4, 8, 80, (65, 1), 1, (32, 0))
    model, changed, pass_ = _run(proto)
    (decision,) = pass_.decisions
    assert [c.name for c in decision.candidates] == ["split-kernel"]
    assert changed == (decision.chosen == "split-kernel")
    if changed:
        assert ops(model)["Conv"] == 2 and ops(model)["Slice"] == 2
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-4)


def test_split_kernel_strided_and_grouped_is_exact() -> None:
    proto = conv(4, 4, 72, (70, 3), 2, (3, 1), g=2)
    model, changed, _ = _run(proto, lambda p, t: FakeCost(cycles=len(p.graph.node)))
    assert not changed  # more nodes: the stand-in oracle says no
    model, changed, pass_ = _run(proto, lambda p, t: FakeCost(cycles=100 - len(p.graph.node)))
    assert changed and pass_.decisions[0].chosen == "split-kernel"
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-4)


def test_convs_inside_the_limits_are_not_matched() -> None:
    _model, changed, pass_ = _run(conv(4, 4, 16, (3, 3), 3, (1, 1)))
    assert not changed and not pass_.decisions
