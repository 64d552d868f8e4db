from __future__ import annotations

from nirc.passes.eliminate_dead_code import EliminateDeadCodePass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def test_removes_unreachable_nodes() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        y = Relu (x)
        dead = Sigmoid (x)
        deader = Tanh (dead)
    }"""
    )
    model, changed, ctx = run_pass(EliminateDeadCodePass(), proto)
    assert changed
    assert ops(model) == {"Relu": 1}
    assert ctx.stats["removed_nodes"] == 2
    assert_same_function(proto, model.to_proto())


def test_keeps_live_graph_and_unused_inputs() -> None:
    proto = parse(HEADER + "g (float[1,4] x, float[1,4] unused) => (float[1,4] y) { y = Relu (x) }")
    model, changed, _ = run_pass(EliminateDeadCodePass(), proto)
    assert not changed
    assert [i.name for i in model.to_proto().graph.input] == ["x", "unused"]
