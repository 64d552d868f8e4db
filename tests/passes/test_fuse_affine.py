from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.fuse_affine import FuseAffinePass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(0)
F32 = np.float32


def _rand(*shape: int, low: float | None = None) -> np.ndarray:
    if low is not None:
        return RNG.uniform(low, low + 1.0, shape).astype(F32)
    return RNG.standard_normal(shape).astype(F32)


def _conv_then(body: str, outputs: str = "float[1,8,6,6] y", **extra: np.ndarray) -> object:
    return parse(
        HEADER
        + f"""
    g (float[1,4,6,6] x) => ({outputs}) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
        {body}
    }}""",
        w=_rand(8, 4, 3, 3),
        b=_rand(8),
        **extra,
    )


def _decomposed_bn_after_conv() -> object:
    return _conv_then("m = Mul (c, s)\n y = Add (t, m)", s=_rand(8, 1, 1, low=0.5), t=_rand(8, 1, 1))


def test_mul_and_add_after_conv_fold_into_it() -> None:
    proto = _decomposed_bn_after_conv()
    model, changed, ctx = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    assert ctx.stats == {"folded_into_producer": 2}
    assert_same_function(proto, model.to_proto())


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_sub_and_div_by_constant_after_conv_fold(op: str) -> None:
    proto = _conv_then(f"y = {op} (c, k)", k=_rand(1, 8, 1, 1, low=0.5))
    model, changed, _ = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    assert_same_function(proto, model.to_proto())


def test_constant_minus_conv_is_kept() -> None:
    proto = _conv_then("y = Sub (k, c)", k=_rand(8, 1, 1))
    _, changed, _ = run_pass(FuseAffinePass(), proto)
    assert not changed


def test_conv_output_with_second_reader_is_not_folded() -> None:
    proto = _conv_then("y = Mul (c, s)", outputs="float[1,8,6,6] y, float[1,8,6,6] c", s=_rand(8, 1, 1))
    model, changed, _ = run_pass(FuseAffinePass(), proto)
    assert not changed and ops(model) == {"Conv": 1, "Mul": 1}


def test_constant_varying_over_space_is_kept() -> None:
    proto = _conv_then("y = Mul (c, s)", s=_rand(1, 1, 6, 6))
    _, changed, _ = run_pass(FuseAffinePass(), proto)
    assert not changed


def test_scalar_after_gemm_folds() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,4] x) => (float[2,3] y) {
        c = Gemm <transB = 1, beta = 0.5> (x, w, b)
        m = Mul (c, s)
        y = Add (m, t)
    }""",
        w=_rand(3, 4),
        b=_rand(3),
        s=np.array(1.7, F32),
        t=_rand(1, 3),
    )
    model, changed, _ = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"Gemm": 1}
    assert_same_function(proto, model.to_proto())


def test_grouped_conv_transpose_folds_per_output_channel() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,5,5] x) => (float[1,6,10,10] y) {
        c = ConvTranspose <group = 2, strides = [2, 2], kernel_shape = [2, 2]> (x, w)
        y = Mul (c, s)
    }""",
        w=_rand(4, 3, 2, 2),
        s=_rand(6, 1, 1),
    )
    model, changed, _ = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"ConvTranspose": 1}
    assert_same_function(proto, model.to_proto())


def _affine_then_conv(conv_attrs: str, ops_text: str, group: int = 1) -> object:
    return parse(
        HEADER
        + f"""
    g (float[1,4,6,6] x) => (float[1,8,{6 if "pads" in conv_attrs else 4},{6 if "pads" in conv_attrs else 4}] y) {{
        {ops_text}
        y = Conv {conv_attrs} (a, w, b)
    }}""",
        w=_rand(8, 4 // group, 3, 3),
        b=_rand(8),
        s=_rand(4, 1, 1, low=0.5),
        t=_rand(4, 1, 1),
    )


def test_mul_before_padded_conv_folds_because_padding_zeros_stay_zero() -> None:
    proto = _affine_then_conv("<pads = [1, 1, 1, 1]>", "a = Mul (s, x)")
    model, changed, ctx = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    assert ctx.stats == {"folded_into_consumer": 1}
    assert_same_function(proto, model.to_proto())


def test_add_before_padded_conv_is_kept_because_it_is_not_exact() -> None:
    proto = _affine_then_conv("<pads = [1, 1, 1, 1]>", "m = Mul (x, s)\n a = Add (m, t)")
    model, changed, _ = run_pass(FuseAffinePass(), proto)
    assert not changed and ops(model) == {"Mul": 1, "Add": 1, "Conv": 1}


def test_mul_and_add_before_unpadded_grouped_conv_fold() -> None:
    proto = _affine_then_conv("<group = 2>", "m = Mul (x, s)\n a = Add (m, t)", group=2)
    model, changed, ctx = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    assert ctx.stats == {"folded_into_consumer": 2}
    assert_same_function(proto, model.to_proto())


def test_add_and_mul_before_gemm_fold() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,4] x) => (float[2,3] y) {
        m = Mul (x, s)
        a = Sub (m, t)
        y = Gemm <transB = 1, alpha = 0.5> (a, w, b)
    }""",
        w=_rand(3, 4),
        b=_rand(3),
        s=_rand(4, low=0.5),
        t=_rand(1, 4),
    )
    model, changed, _ = run_pass(FuseAffinePass(), proto)
    assert changed and ops(model) == {"Gemm": 1}
    assert_same_function(proto, model.to_proto())


def test_affine_without_neighbouring_linear_op_is_kept() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { r = Relu (x)\n y = Mul (r, s) }", s=_rand(4))
    _, changed, _ = run_pass(FuseAffinePass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    for proto in (_decomposed_bn_after_conv(), _affine_then_conv("<group = 2>", "m = Mul (x, s)\n a = Add (m, t)", 2)):
        model, _, _ = run_pass(FuseAffinePass(), proto)
        _, changed, _ = run_pass(FuseAffinePass(), model.to_proto())
        assert not changed
