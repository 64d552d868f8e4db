from __future__ import annotations

import numpy as np
from nirc.passes.collapse_reshapes import CollapseReshapesPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
I64 = np.int64


def _chain() -> object:
    return parse(
        HEADER
        + """
    g (float[1,4,2,2] x) => (float[2,8] y) {
        f = Flatten (x)
        u = Unsqueeze (f, zero)
        s = Squeeze (u, zero)
        r = Reshape (s, shape)
        y = Relu (r)
    }""",
        zero=np.array([0], I64),
        shape=np.array([2, -1], I64),
    )


def test_collapses_chain_into_one_reshape() -> None:
    proto = _chain()
    model, changed, ctx = run_pass(CollapseReshapesPass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Reshape": 1, "Relu": 1}
    reshape = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert reshape.input[0] == "x"
    assert ctx.stats == {"collapsed": 3}
    assert_same_function(proto, out, rtol=0, atol=0)


def test_removes_reshape_to_the_same_shape() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,2,2] x) => (float[1,4,2,2] y) {
        a = Relu (x)
        r = Reshape (a, shape)
        y = Sigmoid (r)
    }""",
        shape=np.array([1, 4, -1, 2], I64),
    )
    model, changed, ctx = run_pass(CollapseReshapesPass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert ctx.stats == {"removed_noop": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_chain_that_returns_to_the_input_shape_disappears() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,2,2] x) => (float[1,4,2,2] y) {
        a = Relu (x)
        f = Flatten (a)
        r = Reshape (f, shape)
        y = Sigmoid (r)
    }""",
        shape=np.array([1, 4, 2, 2], I64),
    )
    model, changed, _ = run_pass(CollapseReshapesPass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_intermediate_with_another_reader_stays_for_it() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,2,2] x) => (float[2,8] y, float[1,16] z) {
        f = Flatten (x)
        y = Reshape (f, shape)
        z = Relu (f)
    }""",
        shape=np.array([2, 8], I64),
    )
    model, changed, _ = run_pass(CollapseReshapesPass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Flatten": 1, "Reshape": 1, "Relu": 1}
    assert next(n for n in out.graph.node if n.op_type == "Reshape").input[0] == "x"
    assert_same_function(proto, out, rtol=0, atol=0)


def test_chain_ending_in_a_graph_output_keeps_the_output_name() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,2,2] x) => (float[4,4] y) {
        f = Flatten (x)
        y = Reshape (f, shape)
    }""",
        shape=np.array([4, 4], I64),
    )
    model, changed, _ = run_pass(CollapseReshapesPass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Reshape": 1} and [o.name for o in out.graph.output] == ["y"]
    assert_same_function(proto, out, rtol=0, atol=0)


def test_lone_reshape_and_noop_from_input_to_output_are_kept() -> None:
    lone = parse(HEADER + "g (float[1,4,2,2] x) => (float[1,16] y) { y = Flatten (x) }")
    model, changed, _ = run_pass(CollapseReshapesPass(), lone)
    assert not changed and ops(model) == {"Flatten": 1}
    noop = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { y = Reshape (x, shape) }", shape=np.array([1, 4], I64))
    model, changed, _ = run_pass(CollapseReshapesPass(), noop)
    assert not changed and ops(model) == {"Reshape": 1}


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(CollapseReshapesPass(), _chain())
    _, changed, _ = run_pass(CollapseReshapesPass(), model.to_proto())
    assert not changed
