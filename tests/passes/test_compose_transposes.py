from __future__ import annotations

from nirc.passes.compose_transposes import ComposeTransposesPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def _pair(first: str, second: str, out_shape: str) -> object:
    return parse(
        HEADER
        + f"""
    g (float[1,2,3,4] x) => (float[{out_shape}] y) {{
        a = Relu (x)
        t = Transpose {first} (a)
        u = Transpose {second} (t)
        y = Sigmoid (u)
    }}"""
    )


def _cancelling() -> object:
    return _pair("<perm = [0, 2, 3, 1]>", "<perm = [0, 3, 1, 2]>", "1,2,3,4")


def test_pair_composing_to_identity_cancels() -> None:
    proto = _cancelling()
    model, changed, ctx = run_pass(ComposeTransposesPass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert ctx.stats == {"cancelled_pairs": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_default_perms_reverse_twice_and_cancel() -> None:
    proto = _pair("", "", "1,2,3,4")
    model, changed, _ = run_pass(ComposeTransposesPass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_pair_not_composing_to_identity_becomes_one_transpose() -> None:
    proto = _pair("<perm = [0, 2, 3, 1]>", "<perm = [0, 2, 1, 3]>", "1,4,3,2")
    model, changed, ctx = run_pass(ComposeTransposesPass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Relu": 1, "Transpose": 1, "Sigmoid": 1}
    transpose = next(n for n in out.graph.node if n.op_type == "Transpose")
    assert list(transpose.attribute[0].ints) == [0, 3, 2, 1]
    assert ctx.stats == {"composed": 1}
    assert_same_function(proto, out, rtol=0, atol=0)


def test_first_transpose_with_another_reader_stays() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,2,3,4] x) => (float[1,2,3,4] y, float[1,3,4,2] z) {
        t = Transpose <perm = [0, 2, 3, 1]> (x)
        u = Transpose <perm = [0, 3, 1, 2]> (t)
        y = Sigmoid (u)
        z = Relu (t)
    }"""
    )
    model, changed, _ = run_pass(ComposeTransposesPass(), proto)
    assert changed and ops(model) == {"Transpose": 1, "Sigmoid": 1, "Relu": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_identity_transpose_alone_is_removed_but_not_between_input_and_output() -> None:
    proto = _pair("<perm = [0, 1, 2, 3]>", "<perm = [0, 1, 3, 2]>", "1,2,4,3")
    model, changed, _ = run_pass(ComposeTransposesPass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Transpose": 1, "Sigmoid": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)
    direct = parse(HEADER + "g (float[1,2] x) => (float[1,2] y) { y = Transpose <perm = [0, 1]> (x) }")
    _, changed, _ = run_pass(ComposeTransposesPass(), direct)
    assert not changed


def test_single_transpose_is_not_changed() -> None:
    proto = parse(HEADER + "g (float[1,2,3] x) => (float[3,2,1] y) { y = Transpose (x) }")
    _, changed, _ = run_pass(ComposeTransposesPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    for proto in (_cancelling(), _pair("<perm = [0, 2, 3, 1]>", "<perm = [0, 2, 1, 3]>", "1,4,3,2")):
        model, _, _ = run_pass(ComposeTransposesPass(), proto)
        _, changed, _ = run_pass(ComposeTransposesPass(), model.to_proto())
        assert not changed
