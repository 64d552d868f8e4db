from __future__ import annotations

import numpy as np
import onnx
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
    assert ops(out) == {"Reshape": 2, "Relu": 1}  # the kept Flatten is respelled as a Reshape
    assert all(n.input[0] == "x" for n in out.graph.node if n.op_type == "Reshape")
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


def test_lone_flatten_is_respelled_and_noop_from_input_to_output_is_kept() -> None:
    lone = parse(HEADER + "g (float[1,4,2,2] x) => (float[1,16] y) { y = Flatten (x) }")
    model, changed, ctx = run_pass(CollapseReshapesPass(), lone)
    assert changed and ops(model) == {"Reshape": 1} and ctx.stats == {"respelled": 1}
    assert [o.name for o in model.to_proto().graph.output] == ["y"]
    assert_same_function(lone, model.to_proto(), rtol=0, atol=0)
    noop = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { y = Reshape (x, shape) }", shape=np.array([1, 4], I64))
    model, changed, _ = run_pass(CollapseReshapesPass(), noop)
    assert not changed and ops(model) == {"Reshape": 1}


def test_exporters_flatten_spellings_meet() -> None:
    """TorchScript's Flatten and dynamo's Reshape(allowzero=1) of one flatten end as the same Reshape."""
    body = "g (float[1,8,1,1] x) => (float[1,8] y) {{ {} }}"
    flatten = parse(HEADER + body.format("y = Flatten <axis = 1> (x)"))
    reshape = parse(HEADER + body.format("y = Reshape <allowzero = 1> (x, shape)"), shape=np.array([1, 8], I64))
    forms = []
    for proto in (flatten, reshape):
        model, _, _ = run_pass(CollapseReshapesPass(), proto)
        out = model.to_proto()
        forms.append([(n.op_type, [onnx.helper.get_attribute_value(a) for a in n.attribute]) for n in out.graph.node])
    assert forms[0] == [("Reshape", [])]
    assert forms[0][0][0] == forms[1][0][0]


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(CollapseReshapesPass(), _chain())
    _, changed, _ = run_pass(CollapseReshapesPass(), model.to_proto())
    assert not changed


def _gather(indices: np.ndarray) -> onnx.ModelProto:
    return parse(
        HEADER
        + """
    g (float[1,6,1,1] x) => (float[1,6] y) {
        a = Relu (x)
        f = Reshape (a, flat)
        s = Gather <axis = 0> (f, idx)
        y = Reshape (s, shape)
    }""",
        flat=np.array([6], I64),
        idx=indices,
        shape=np.array([1, 6], I64),
    )


def test_gather_of_every_index_in_order_is_a_reshape() -> None:
    """dynamo's as_strided view: Reshape to 1-D, Gather(arange), Reshape back."""
    proto = _gather(np.arange(6, dtype=I64).reshape(1, 6, 1, 1))
    model, changed, ctx = run_pass(CollapseReshapesPass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Reshape": 1}
    assert ctx.stats["gather_as_reshape"] == 1
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_gather_that_permutes_stays() -> None:
    proto = _gather(np.array([1, 0, 2, 3, 4, 5], I64))
    model, _, ctx = run_pass(CollapseReshapesPass(), proto)
    assert ops(model)["Gather"] == 1 and "gather_as_reshape" not in ctx.stats
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)
