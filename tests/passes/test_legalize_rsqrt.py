"""legalize-rsqrt: x / Sqrt(v), 1 / Sqrt(v), Reciprocal(Sqrt(v)) and Pow(x, 2) in NPU forms."""

from __future__ import annotations

import numpy as np
from nirc.passes.legalize_rsqrt import LegalizeRsqrtPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def _std_division() -> object:
    """ConvNeXt's channels-first LayerNorm divides by the standard deviation like this."""
    return parse(
        HEADER
        + """g (float[1,8,6,5] x, float[1,1,6,5] v) => (float[1,8,6,5] y) {
            a = Abs (v)
            e = Add (a, eps)
            s = Sqrt (e)
            y = Div (x, s)
        }""",
        eps=np.array(1e-6, np.float32),
    )


def test_division_by_sqrt_becomes_mul_by_pow_minus_half() -> None:
    proto = _std_division()
    model, changed, ctx = run_pass(LegalizeRsqrtPass(), proto)
    assert changed and ctx.stats == {"rsqrt": 1}
    assert ops(model) == {"Abs": 1, "Add": 1, "Pow": 1, "Mul": 1}
    pow_node = next(n for n in model.graph.nodes if n.op == "Pow")
    assert float(np.asarray(pow_node.inputs[1].values)) == -0.5
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_reciprocal_and_unit_division_become_pow() -> None:
    proto = parse(
        HEADER
        + """g (float[1,4,3,3] v) => (float[1,4,3,3] y, float[1,4,3,3] z) {
            a = Abs (v)
            s = Sqrt (a)
            y = Reciprocal (s)
            one = Constant <value = float {1.0}> ()
            z = Div (one, s)
        }"""
    )
    model, changed, ctx = run_pass(LegalizeRsqrtPass(), proto)
    assert changed and ctx.stats == {"rsqrt": 2}
    assert ops(model) == {"Abs": 1, "Pow": 2}
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_sqrt_read_elsewhere_stays_for_that_reader() -> None:
    proto = parse(
        HEADER
        + """g (float[1,4,3,3] x, float[1,4,3,3] v) => (float[1,4,3,3] y, float[1,4,3,3] s) {
            a = Abs (v)
            s = Sqrt (a)
            y = Div (x, s)
        }"""
    )
    model, changed, _ = run_pass(LegalizeRsqrtPass(), proto)
    assert changed and ops(model) == {"Abs": 1, "Sqrt": 1, "Pow": 1, "Mul": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_square_becomes_mul() -> None:
    proto = parse(
        HEADER + "g (float[1,4,3,3] x) => (float[1,4,3,3] y) { y = Pow (x, two) }", two=np.array(2.0, np.float32)
    )
    model, changed, ctx = run_pass(LegalizeRsqrtPass(), proto)
    assert changed and ctx.stats == {"square": 1} and ops(model) == {"Mul": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_other_divisions_and_powers_are_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[1,4,3,3] x, float[1,4,3,3] v) => (float[1,4,3,3] y, float[1,4,3,3] z) {
            y = Div (x, v)
            z = Pow (x, three)
        }""",
        three=np.array(3.0, np.float32),
    )
    model, changed, _ = run_pass(LegalizeRsqrtPass(), proto)
    assert not changed and ops(model) == {"Div": 1, "Pow": 1}


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(LegalizeRsqrtPass(), _std_division())
    _, changed, _ = run_pass(LegalizeRsqrtPass(), model.to_proto())
    assert not changed
