from __future__ import annotations

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
