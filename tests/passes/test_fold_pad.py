from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.fold_pad import FoldPadPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(0)
I64 = np.int64


def _pad_then(
    reader: str,
    out_shape: str,
    pads: list[int],
    value: float | None = None,
    extra: str = "",
    mode: str = "",
    axes: list[int] | None = None,
    cin: int = 2,
) -> object:
    inputs = "x, p" + (", v" if value is not None or axes is not None else "") + (", ax" if axes is not None else "")
    inits: dict[str, np.ndarray] = {
        "p": np.array(pads, I64),
        "w": RNG.standard_normal((3, cin, 3, 3)).astype(np.float32),
    }
    if value is not None or axes is not None:
        inits["v"] = np.array(0.0 if value is None else value, np.float32)
    if axes is not None:
        inits["ax"] = np.array(axes, I64)
    return parse(
        HEADER
        + f"""
    g (float[1,2,6,6] x) => (float[{out_shape}] y{extra}) {{
        t = Pad {mode} ({inputs})
        y = {reader}
    }}""",
        **inits,
    )


def _conv() -> object:
    return _pad_then("Conv <pads = [1, 0, 0, 1]> (t, w)", "1,3,7,7", [0, 0, 1, 2, 0, 0, 1, 0])


def test_zero_pad_folds_into_conv_pads() -> None:
    proto = _conv()
    model, changed, ctx = run_pass(FoldPadPass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    conv = model.to_proto().graph.node[0]
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [2, 2, 1, 1]
    assert ctx.stats == {"folded_into_conv": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_pad_with_axes_input_folds() -> None:
    proto = _pad_then("Conv (t, w)", "1,3,5,5", [1, 0, 0, 1], axes=[2, -1])
    model, changed, _ = run_pass(FoldPadPass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("pads", "value", "mode", "why"),
    [
        ([0, 0, 1, 1, 0, 0, 1, 1], 1.0, "", "non-zero pad value"),
        ([0, 1, 1, 1, 0, 0, 1, 1], None, "", "pads the channel axis"),
        ([0, 0, 1, 1, 0, 0, 1, 1], None, '<mode = "reflect">', "reflect mode"),
        ([0, 0, -1, 1, 0, 0, 1, 1], None, "", "negative pad (a crop)"),
    ],
)
def test_pad_that_a_conv_cannot_express_is_kept(pads: list[int], value: float | None, mode: str, why: str) -> None:
    out = f"1,3,{4 + pads[2] + pads[6]},{4 + pads[3] + pads[7]}"
    proto = _pad_then("Conv (t, w)", out, pads, value=value, mode=mode, cin=2 + pads[1] + pads[5])
    model, changed, _ = run_pass(FoldPadPass(), proto)
    assert not changed, why
    assert ops(model) == {"Pad": 1, "Conv": 1}


def test_pad_with_another_reader_is_kept() -> None:
    proto = _pad_then("Conv (t, w)", "1,3,6,6", [0, 0, 1, 1, 0, 0, 1, 1], extra=", float[1,2,8,8] t")
    _, changed, _ = run_pass(FoldPadPass(), proto)
    assert not changed


def test_average_pool_counting_padding_absorbs_zero_pad() -> None:
    reader = "AveragePool <kernel_shape = [3, 3], count_include_pad = 1> (t)"
    proto = _pad_then(reader, "1,2,6,6", [0, 0, 1, 1, 0, 0, 1, 1])
    model, changed, ctx = run_pass(FoldPadPass(), proto)
    assert changed and ops(model) == {"AveragePool": 1}
    assert ctx.stats == {"folded_into_averagepool": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)
    excluding = _pad_then("AveragePool <kernel_shape = [3, 3]> (t)", "1,2,6,6", [0, 0, 1, 1, 0, 0, 1, 1])
    _, changed, _ = run_pass(FoldPadPass(), excluding)
    assert not changed


def test_max_pool_absorbs_minus_infinity_pad_only() -> None:
    reader = "MaxPool <kernel_shape = [3, 3], strides = [2, 2]> (t)"
    proto = _pad_then(reader, "1,2,3,3", [0, 0, 1, 1, 0, 0, 0, 0], value=-np.inf)
    model, changed, ctx = run_pass(FoldPadPass(), proto)
    assert changed and ops(model) == {"MaxPool": 1}
    assert ctx.stats == {"folded_into_maxpool": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)
    zero_pad = _pad_then(reader, "1,2,3,3", [0, 0, 1, 1, 0, 0, 0, 0])
    _, changed, _ = run_pass(FoldPadPass(), zero_pad)
    assert not changed


def test_no_pad_means_no_change() -> None:
    proto = parse(HEADER + "g (float[1,2,4,4] x) => (float[1,2,4,4] y) { y = Relu (x) }")
    _, changed, _ = run_pass(FoldPadPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(FoldPadPass(), _conv())
    _, changed, _ = run_pass(FoldPadPass(), model.to_proto())
    assert not changed
