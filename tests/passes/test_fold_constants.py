from __future__ import annotations

import numpy as np
from nirc.passes.fold_constants import FoldConstantsPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(0)


def _weights_chain() -> object:
    text = (
        HEADER
        + """
    g (float[3,2] x) => (float[3,2] y) {
        c = Constant <value = float[2,3] {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}> ()
        t = Transpose (c)
        s = Mul (t, two)
        y = Add (x, s)
    }"""
    )
    return parse(text, two=np.array(2.0, np.float32))


def test_folds_constant_chain_into_one_initializer() -> None:
    proto = _weights_chain()
    model, changed, ctx = run_pass(FoldConstantsPass(), proto)
    assert changed
    assert ops(model) == {"Add": 1}
    assert ctx.stats == {"constants_to_initializers": 1, "folded": 2}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_folds_shape_arithmetic_of_static_tensors() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,4,3,3] x) => (float[2,36] y) {
        sh = Shape (x)
        n = Gather <axis = 0> (sh, zero)
        nu = Unsqueeze (n, ax)
        shape = Concat <axis = 0> (nu, minus1)
        y = Reshape (x, shape)
    }""",
        zero=np.array(0, np.int64),
        ax=np.array([0], np.int64),
        minus1=np.array([-1], np.int64),
    )
    model, changed, ctx = run_pass(FoldConstantsPass(), proto)
    assert changed
    assert ops(model) == {"Reshape": 1}
    assert ctx.stats["folded"] == 4
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_shape_with_start_end_and_size() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,4,3,5] x) => (float[2,4,15] y, float[120] flat) {
        hw = Shape <start = -2> (x)
        p = ReduceProd <keepdims = 1> (hw)
        lead = Shape <end = 2> (x)
        shape = Concat <axis = 0> (lead, p)
        y = Reshape (x, shape)
        total = Size (x)
        tu = Unsqueeze (total, ax)
        flat = Reshape (x, tu)
    }""",
        ax=np.array([0], np.int64),
    )
    model, changed, _ = run_pass(FoldConstantsPass(), proto)
    assert changed
    assert ops(model) == {"Reshape": 2}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_skips_results_much_larger_than_their_inputs() -> None:
    proto = parse(
        HEADER
        + """
    g (float[4,4] x) => (float[4,4] y) {
        big = ConstantOfShape <value = float[1] {1.0}> (shape)
        y = Add (x, big)
    }""",
        shape=np.array([4, 4], np.int64),
    )
    model, changed, ctx = run_pass(FoldConstantsPass(max_growth=10), proto)
    assert not changed
    assert ops(model) == {"ConstantOfShape": 1, "Add": 1}
    assert ctx.stats["skipped_too_large"] == 1
    model, changed, _ = run_pass(FoldConstantsPass(), proto)
    assert changed and ops(model) == {"Add": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_keeps_random_ops_and_graph_outputs() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,2] x) => (float[2,2] y, float[2,2] z) {
        r = RandomUniformLike (c)
        y = Add (x, r)
        z = Mul (c, c)
    }""",
        c=np.ones((2, 2), np.float32),
    )
    model, changed, _ = run_pass(FoldConstantsPass(), proto)
    assert not changed
    assert ops(model) == {"RandomUniformLike": 1, "Add": 1, "Mul": 1}


def test_no_constant_nodes_means_no_change() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { y = Mul (x, c) }", c=np.ones(4, np.float32))
    _, changed, _ = run_pass(FoldConstantsPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(FoldConstantsPass(), _weights_chain())
    _, changed, _ = run_pass(FoldConstantsPass(), model.to_proto())
    assert not changed
