from __future__ import annotations

import numpy as np
from nirc.passes.eliminate_identity import EliminateIdentityPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def test_removes_identity_and_dropout() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = Identity (x)
        b = Relu (a)
        c = Dropout (b)
        y = Sigmoid (c)
    }"""
    )
    model, changed, ctx = run_pass(EliminateIdentityPass(), proto)
    assert changed
    assert ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert ctx.stats == {"removed_identity": 1, "removed_dropout": 1}
    assert_same_function(proto, model.to_proto())


def test_identity_feeding_graph_output_keeps_output_name() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = Relu (x)
        y = Identity (a)
    }"""
    )
    model, changed, _ = run_pass(EliminateIdentityPass(), proto)
    assert changed
    out = model.to_proto()
    assert [o.name for o in out.graph.output] == ["y"]
    assert ops(out) == {"Relu": 1}
    assert_same_function(proto, out)


def test_keeps_identity_from_graph_input_to_output() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { y = Identity (x) }")
    model, changed, _ = run_pass(EliminateIdentityPass(), proto)
    assert not changed
    assert ops(model) == {"Identity": 1}


def test_keeps_dropout_in_training_mode() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        r = Constant <value = float {0.5}> ()
        t = Constant <value = bool {1}> ()
        d = Dropout (x, r, t)
        y = Relu (d)
    }""",
    )
    model, changed, _ = run_pass(EliminateIdentityPass(), proto)
    assert not changed
    assert ops(model)["Dropout"] == 1


def test_second_run_changes_nothing() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { a = Identity (x)\n y = Relu (a) }")
    model, _, _ = run_pass(EliminateIdentityPass(), proto)
    _, changed, _ = run_pass(EliminateIdentityPass(), model.to_proto())
    assert not changed


def test_removes_exporter_noise() -> None:
    """Whole-range Slice (TorchScript's ``x[:, :c]``), one-output Split, one-input Concat, zero Pad,
    same-type Cast, same-shape Expand and unit Tile all return their input."""
    proto = parse(
        HEADER
        + """
    g (float[1,4,3,3] x) => (float[1,4,3,3] y) {
        a = Relu (x)
        b = Slice (a, zero, big, one)
        c = Split <axis = 1, num_outputs = 1> (b)
        d = Concat <axis = 1> (c)
        e = Pad (d, pads)
        f = Cast <to = 1> (e)
        g = Expand (f, shape)
        h = Tile (g, reps)
        y = Sigmoid (h)
    }""",
        zero=np.array([0], np.int64),
        big=np.array([np.iinfo(np.int64).max], np.int64),
        one=np.array([1], np.int64),
        pads=np.zeros(8, np.int64),
        shape=np.array([1, 4, 3, 3], np.int64),
        reps=np.ones(4, np.int64),
    )
    model, changed, ctx = run_pass(EliminateIdentityPass(), proto)
    assert changed
    assert ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert ctx.stats == {f"removed_{op}": 1 for op in ("slice", "split", "concat", "pad", "cast", "expand", "tile")}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_keeps_ops_that_change_the_tensor() -> None:
    """A Slice that crops, a Cast that converts, a Pad that pads, an Expand that broadcasts."""
    proto = parse(
        HEADER
        + """
    g (float[1,4,3,3] x) => (float[1,3,5,3] y, int32[1,4,3,3] z, float[2,4,3,3] w) {
        a = Slice (x, zero, three, one)
        y = Pad (a, pads)
        z = Cast <to = 6> (x)
        w = Expand (x, shape)
    }""",
        zero=np.array([0], np.int64),
        three=np.array([3], np.int64),
        one=np.array([1], np.int64),
        pads=np.array([0, 0, 1, 0, 0, 0, 1, 0], np.int64),
        shape=np.array([2, 1, 1, 1], np.int64),
    )
    model, changed, _ = run_pass(EliminateIdentityPass(), proto)
    assert not changed
    assert ops(model) == {"Slice": 1, "Pad": 1, "Cast": 1, "Expand": 1}


def test_removes_arithmetic_with_a_neutral_constant() -> None:
    """timm's MobileOne adds a literal 0 to every branch sum in its TorchScript export."""
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y) {
        a = Relu (x)
        b = Add (zero, a)
        c = Sub (b, zero)
        d = Mul (c, ones)
        e = Div (d, one)
        y = Sigmoid (e)
    }""",
        zero=np.array(0.0, np.float32),
        ones=np.ones((1, 4), np.float32),
        one=np.array([1.0], np.float32),
    )
    model, changed, ctx = run_pass(EliminateIdentityPass(), proto)
    assert changed
    assert ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert ctx.stats == {"removed_add": 1, "removed_sub": 1, "removed_mul": 1, "removed_div": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_keeps_arithmetic_that_changes_the_value_or_shape() -> None:
    """0 - x negates, x + 0.5 shifts, and x + zeros[2,4] broadcasts [1,4] to [2,4]."""
    proto = parse(
        HEADER
        + """
    g (float[1,4] x) => (float[1,4] y, float[1,4] z, float[2,4] w) {
        y = Sub (zero, x)
        z = Add (x, half)
        w = Add (x, zeros)
    }""",
        zero=np.array(0.0, np.float32),
        half=np.array(0.5, np.float32),
        zeros=np.zeros((2, 4), np.float32),
    )
    model, changed, _ = run_pass(EliminateIdentityPass(), proto)
    assert not changed
    assert ops(model) == {"Sub": 1, "Add": 2}


def test_removes_expand_its_readers_broadcast_anyway() -> None:
    """EdgeNeXt's ``x / norm.expand_as(x)``: Div broadcasts the [1,4,1] norm itself."""
    proto = parse(
        HEADER
        + """
    g (float[1,4,6] x) => (float[1,4,6] y, float[1,4,6] z) {
        n = ReduceMean <keepdims = 1> (x, axes)
        e = Expand (n, shape)
        y = Div (x, e)
        z = Sub (e, x)
    }""",
        axes=np.array([2], np.int64),
        shape=np.array([1, 4, 6], np.int64),
    )
    model, changed, ctx = run_pass(EliminateIdentityPass(), proto)
    assert changed and "Expand" not in ops(model)
    assert ctx.stats == {"removed_broadcast_expand": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_keeps_expand_read_by_a_non_broadcasting_op_or_that_sets_the_shape() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,1] x, float[1,1,6] v) => (float[1,4,6] y, float[1,4,6] z) {
        e = Expand (x, shape)
        y = Relu (e)
        f = Expand (x, shape)
        z = Mul (f, v)
    }""",
        shape=np.array([1, 4, 6], np.int64),
    )
    model, changed, _ = run_pass(EliminateIdentityPass(), proto)
    assert not changed and ops(model)["Expand"] == 2
