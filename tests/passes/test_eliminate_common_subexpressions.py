from __future__ import annotations

import numpy as np
from nirc.passes.eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
CSE = EliminateCommonSubexpressionsPass


def _duplicated_chain() -> object:
    return parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = Relu (x)
        b = Relu (x)
        c = Sigmoid (a)
        d = Sigmoid (b)
        e = Mul (a, d)
        f = Mul (b, c)
        y = Add (e, f)
    }"""
    )


def test_merges_duplicates_and_what_they_feed() -> None:
    proto = _duplicated_chain()
    model, changed, ctx = run_pass(CSE(), proto)
    assert changed
    assert ops(model) == {"Relu": 1, "Sigmoid": 1, "Mul": 1, "Add": 1}
    assert ctx.stats["merged"] == 3
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_equal_small_constants_match_by_value() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = Mul (x, c1)
        b = Mul (x, c2)
        k = Constant <value = float[1] {3.0}> ()
        j = Constant <value = float[1] {3.0}> ()
        p = Add (a, k)
        q = Add (b, j)
        y = Sub (p, q)
    }""",
        c1=np.full(4, 0.5, np.float32),
        c2=np.full(4, 0.5, np.float32),
    )
    model, changed, _ = run_pass(CSE(), proto)
    assert changed
    assert ops(model) == {"Mul": 1, "Constant": 1, "Add": 1, "Sub": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_keeps_nodes_that_differ_in_attributes_or_inputs() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = LeakyRelu <alpha = 0.1> (x)
        b = LeakyRelu <alpha = 0.2> (x)
        c = Mul (x, c1)
        d = Mul (x, c2)
        e = Add (a, b)
        f = Add (c, d)
        y = Add (e, f)
    }""",
        c1=np.full(4, 0.5, np.float32),
        c2=np.full(4, 0.25, np.float32),
    )
    model, changed, _ = run_pass(CSE(), proto)
    assert not changed
    assert ops(model) == {"LeakyRelu": 2, "Mul": 2, "Add": 3}


def test_duplicate_graph_outputs_keep_their_names() -> None:
    both = parse(HEADER + "g (float[1,4] x) => (float[1,4] y, float[1,4] z) { y = Relu (x)\n z = Relu (x) }")
    model, changed, _ = run_pass(CSE(), both)
    assert not changed
    assert ops(model) == {"Relu": 2}
    one = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y, float[1,4] z) {
        a = Relu (x)
        z = Sigmoid (a)
        y = Relu (x)
    }"""
    )
    model, changed, _ = run_pass(CSE(), one)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Relu": 1, "Sigmoid": 1}
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_same_function(one, out, rtol=0, atol=0)


def test_keeps_random_ops() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = RandomUniformLike (x)
        b = RandomUniformLike (x)
        y = Sub (a, b)
    }"""
    )
    model, changed, _ = run_pass(CSE(), proto)
    assert not changed
    assert ops(model)["RandomUniformLike"] == 2


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(CSE(), _duplicated_chain())
    _, changed, _ = run_pass(CSE(), model.to_proto())
    assert not changed
