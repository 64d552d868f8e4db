"""approximate-gelu (opt-in, lossy): tanh/sigmoid GELU with the error measured on calibration-like data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nirc.passes.approximate_gelu import ApproximateGeluPass, approximation, gelu
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
CONSTS = {
    "sqrt2": np.array(math.sqrt(2.0), np.float32),
    "one": np.array(1.0, np.float32),
    "half": np.array(0.5, np.float32),
}
# The three orders in which exporters multiply x, (1 + erf) and 0.5.
FORMS = {
    "(x * (1 + erf)) * 0.5": "d = Div (x, sqrt2) e = Erf (d) a = Add (e, one) m = Mul (x, a) y = Mul (m, half)",
    "x * ((1 + erf) * 0.5)": "d = Div (x, sqrt2) e = Erf (d) a = Add (one, e) m = Mul (a, half) y = Mul (x, m)",
    "(x * 0.5) * (1 + erf)": "d = Div (x, sqrt2) e = Erf (d) a = Add (e, one) h = Mul (x, half) y = Mul (h, a)",
}


def _gelu(body: str) -> object:
    return parse(HEADER + f"g (float[1,8,4,4] x) => (float[1,8,4,4] y) {{ {body} }}", **CONSTS)


@pytest.mark.parametrize("order", sorted(FORMS))
@pytest.mark.parametrize(("form", "ops_after", "bound"), [("tanh", {"Mul": 6, "Add": 2, "Tanh": 1}, 1e-3),
                                                          ("sigmoid", {"Mul": 2, "Sigmoid": 1}, 3e-2)])  # fmt: skip
def test_rewrite_reports_the_error_it_measured(order: str, form: str, ops_after: dict[str, int], bound: float) -> None:
    proto = _gelu(FORMS[order])
    model, changed, ctx = run_pass(ApproximateGeluPass(form=form), proto)  # type: ignore[arg-type]
    assert changed and ops(model) == ops_after
    measured = ctx.stats["max_abs_error_x1e6"] * 1e-6
    assert 0 < measured < bound
    # An empirical maximum: other draws of the same kind of inputs come within a few percent of it.
    assert_same_function(proto, model.to_proto(), rtol=0, atol=measured * 1.05 + 2e-6)


def test_pass_declares_itself_inexact() -> None:
    assert ApproximateGeluPass.exact is False


def test_approximations_against_the_exact_function() -> None:
    x = np.linspace(-6, 6, 2001)
    assert np.max(np.abs(approximation(x, "tanh") - gelu(x))) < 1e-3
    assert np.max(np.abs(approximation(x, "sigmoid") - gelu(x))) < 3e-2


def test_erf_outside_a_gelu_is_kept() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { e = Erf (x) y = Add (e, one) }", one=CONSTS["one"])
    _, changed, _ = run_pass(ApproximateGeluPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(ApproximateGeluPass(), _gelu(FORMS["(x * (1 + erf)) * 0.5"]))
    _, changed, _ = run_pass(ApproximateGeluPass(), model.to_proto())
    assert not changed
