from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.canonicalize_activations import CanonicalizeActivationsPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
ACT = CanonicalizeActivationsPass
F32 = np.float32


def _graph(body: str, **inits: np.ndarray) -> object:
    return parse(HEADER + "g (float[2,3,4] x) => (float[2,3,4] y) {" + body + "}", **inits)


def test_clip_without_max_becomes_relu() -> None:
    proto = _graph("y = Clip (x, lo)", lo=np.array(0.0, F32))
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed and ops(model) == {"Relu": 1}
    assert ctx.stats == {"clip_to_relu": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_clip_with_infinite_max_becomes_relu() -> None:
    proto = _graph("y = Clip (x, lo, hi)", lo=np.array(0.0, F32), hi=np.array(np.inf, F32))
    model, changed, _ = run_pass(ACT(), proto)
    assert changed and ops(model) == {"Relu": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_relu6_clip_stays_clip_with_constant_bounds() -> None:
    proto = _graph(
        """
        lo = Constant <value = float {0.0}> ()
        hi = Constant <value = float {6.0}> ()
        y = Clip (x, lo, hi)"""
    )
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Clip": 1}
    assert {i.name for i in out.graph.initializer} == set(out.graph.node[0].input[1:])
    assert ctx.stats == {"clip_bounds_materialized": 1}
    assert_same_function(proto, out, rtol=0, atol=0)


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 1.0), (0.0, 6.0), (0.5, np.inf)])
def test_clip_with_other_bounds_is_kept(lo: float, hi: float) -> None:
    proto = _graph("y = Clip (x, lo, hi)", lo=np.array(lo, F32), hi=np.array(hi, F32))
    model, changed, _ = run_pass(ACT(), proto)
    assert not changed and ops(model) == {"Clip": 1}


def test_max_with_zero_becomes_relu() -> None:
    proto = _graph("y = Max (zero, x)", zero=np.zeros((1, 4), F32))
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed and ops(model) == {"Relu": 1}
    assert ctx.stats == {"max_to_relu": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_max_with_zero_that_broadcasts_x_larger_is_kept() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[3,4] y) { y = Max (x, zero) }", zero=np.zeros((3, 4), F32))
    _, changed, _ = run_pass(ACT(), proto)
    assert not changed


def test_max_of_x_and_scaled_x_becomes_leaky_relu() -> None:
    proto = _graph("s = Mul (a, x)\n y = Max (s, x)", a=np.array(0.1, F32))
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed and ops(model) == {"LeakyRelu": 1}
    assert ctx.stats == {"max_to_leaky_relu": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


@pytest.mark.parametrize("alpha", [1.5, -0.1, 0.0])
def test_max_with_slope_outside_unit_interval_is_kept(alpha: float) -> None:
    proto = _graph("s = Mul (x, a)\n y = Max (x, s)", a=np.array(alpha, F32))
    model, changed, _ = run_pass(ACT(), proto)
    assert not changed and ops(model) == {"Mul": 1, "Max": 1}


def test_x_times_hardsigmoid_becomes_hardswish() -> None:
    proto = _graph("h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (x)\n y = Mul (x, h)")
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed and ops(model) == {"HardSwish": 1}
    assert ctx.stats == {"hardswish": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_x_times_default_hardsigmoid_is_kept() -> None:
    proto = _graph("h = HardSigmoid (x)\n y = Mul (x, h)")
    _, changed, _ = run_pass(ACT(), proto)
    assert not changed


HARDSWISH_SPELLINGS = {
    "x*relu6/6": "a = Add (x, three)\n r = Clip (a, zero, six)\n m = Mul (x, r)\n y = Div (m, six)",
    "x*(relu6/6)": "a = Add (three, x)\n r = Clip (a, zero, six)\n d = Div (r, six)\n y = Mul (d, x)",
    "(x*relu6)*(1/6)": "a = Add (x, three)\n r = Clip (a, zero, six)\n m = Mul (r, x)\n y = Mul (sixth, m)",
    "x*(relu6*(1/6))": "a = Add (x, three)\n r = Clip (a, zero, six)\n d = Mul (r, sixth)\n y = Mul (x, d)",
}
CONSTS = {
    "three": np.array(3.0, F32),
    "zero": np.array(0.0, F32),
    "six": np.array(6.0, F32),
    "sixth": np.array(1 / 6, F32),
}


@pytest.mark.parametrize("spelling", sorted(HARDSWISH_SPELLINGS))
def test_x_times_relu6_of_x_plus_3_over_6_becomes_hardswish(spelling: str) -> None:
    proto = _graph(HARDSWISH_SPELLINGS[spelling], **CONSTS)
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed and ops(model) == {"HardSwish": 1}
    assert ctx.stats == {"hardswish": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_hardswish_lookalikes_are_kept() -> None:
    plus_two = HARDSWISH_SPELLINGS["x*relu6/6"].replace("three", "two")
    proto = _graph(plus_two, two=np.array(2.0, F32), **CONSTS)
    model, changed, _ = run_pass(ACT(), proto)
    assert not changed and "HardSwish" not in ops(model)
    # The relu6 result is also an output: fusing would hide it.
    text = HEADER + (
        "g (float[2,3,4] x) => (float[2,3,4] y, float[2,3,4] r) {" + HARDSWISH_SPELLINGS["x*relu6/6"] + "}"
    )
    model, changed, _ = run_pass(ACT(), parse(text, **CONSTS))
    assert not changed and "HardSwish" not in ops(model)


def test_silu_is_recognised_in_canonical_operand_order() -> None:
    proto = _graph("s = Sigmoid (x)\n y = Mul (s, x)")
    model, changed, ctx = run_pass(ACT(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Sigmoid": 1, "Mul": 1}
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert list(mul.input) == ["x", "s"]
    assert ctx.stats == {"silu_reordered": 1}
    assert_same_function(proto, out, rtol=0, atol=0)
    model, changed, ctx = run_pass(ACT(), out)
    assert not changed and ctx.stats == {"silu": 1}


def test_no_activation_pattern_means_no_change() -> None:
    proto = _graph("y = Mul (x, two)", two=np.array(2.0, F32))
    _, changed, _ = run_pass(ACT(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    body = (
        "c = Clip (x, zero)\n s = Mul (c, a)\n l = Max (c, s)\n"
        "h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (l)\n y = Mul (h, l)"
    )
    proto = _graph(body, zero=np.array(0.0, F32), a=np.array(0.2, F32))
    model, changed, _ = run_pass(ACT(), proto)
    assert changed and ops(model) == {"Relu": 1, "LeakyRelu": 1, "HardSwish": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)
    _, changed, _ = run_pass(ACT(), model.to_proto())
    assert not changed
