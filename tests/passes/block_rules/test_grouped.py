"""grouped rule of substitute-blocks: a grouped conv rewritten with fewer groups (block-diagonal weights) only
where Vela says it is faster. Exactness with a stand-in oracle; the choice itself with Vela on small shapes."""

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


def per_group(proto: onnx.ModelProto, target: object) -> FakeCost:
    """Each group is one NPU op: fewer groups is faster."""
    groups = sum(
        next((a.i for a in n.attribute if a.name == "group"), 1) for n in proto.graph.node if n.op_type == "Conv"
    )
    return FakeCost(cycles=1000 * groups)


def grouped_conv(c: int, g: int, hw: int, seed: int = 0) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((c, c // g, 3, 3)) / np.sqrt(9 * c // g)
    b = np.random.default_rng(seed + 1).standard_normal(c) * 0.1
    return parse(
        HEADER
        + f"""
    g (float[1,{c},{hw},{hw}] x) => (float[1,{c},{hw},{hw}] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = {g}> (x, w, b)
        y = Relu (a)
    }}""",
        w=w.astype(np.float32),
        b=b.astype(np.float32),
    )


@pytest.mark.parametrize(("c", "g"), [(16, 4), (24, 6), (32, 8)])
def test_dense_block_diagonal_is_exact(c: int, g: int) -> None:
    proto = grouped_conv(c, g, 6)
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("grouped",), cost_fn=per_group)
    assert pass_.run(model, PassContext(target=TARGET))
    (decision,) = pass_.decisions
    assert decision.chosen == "dense"
    names = [c.name for c in decision.candidates]
    assert names[0] == "dense" and all(n.startswith("groups=") for n in names[1:])
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    assert conv.attrs["group"] == 1 and tuple(conv.inputs[1].shape) == (c, c, 3, 3)
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    assert not SubstituteBlocksPass(rules=("grouped",), cost_fn=per_group).run(model, PassContext(target=TARGET))


def test_coarser_grouping_is_exact() -> None:
    proto = grouped_conv(32, 8, 6)

    def prefers_two(proto: onnx.ModelProto, target: object) -> FakeCost:
        group = next(a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
        return FakeCost(cycles=abs(group - 2) + 1)

    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("grouped",), cost_fn=prefers_two)
    assert pass_.run(model, PassContext(target=TARGET))
    assert pass_.decisions[0].chosen == "groups=2"
    assert next(n for n in model.graph.nodes if n.op == "Conv").attrs["group"] == 2
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


def test_depthwise_is_not_a_match() -> None:
    proto = grouped_conv(16, 16, 6)
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("grouped",), cost_fn=per_group)
    assert not pass_.run(model, PassContext(target=TARGET)) and not pass_.decisions


def test_vela_keeps_wide_groups_and_merges_narrow_ones() -> None:
    """Measured (Vela 5.2, ethos-u65-256): 8 groups of 8 channels are fastest as they are; 32 groups of 4
    channels run faster as 8 groups of 16 (one brick per group)."""
    wide = IRModel.load(grouped_conv(64, 8, 16))
    keep = SubstituteBlocksPass(rules=("grouped",))
    assert not keep.run(wide, PassContext(target=TARGET))
    (decision,) = keep.decisions
    assert decision.chosen is None and decision.before is not None
    assert all(c.cost is not None and c.cost.cycles > decision.before.cycles for c in decision.candidates)

    proto = grouped_conv(128, 32, 8)
    narrow = IRModel.load(proto)
    merge = SubstituteBlocksPass(rules=("grouped",))
    assert merge.run(narrow, PassContext(target=TARGET))
    (decision,) = merge.decisions  # the regrouped conv is not re-costed: its groupings were candidates already
    assert decision.chosen is not None and decision.before is not None
    chosen = next(c for c in decision.candidates if c.name == decision.chosen)
    assert chosen.cost is not None and chosen.cost.cycles < decision.before.cycles
    assert ops(narrow) == {"Conv": 1, "Relu": 1}
    assert_same_function(proto, narrow.to_proto(), rtol=1e-5, atol=1e-5)
