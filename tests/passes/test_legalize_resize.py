"""legalize-resize: nearest downscales as strided Slices, 2^k upscales above 8 as x8/x4/x2 chains."""

from __future__ import annotations

import pytest
from nirc.passes.legalize_resize import LegalizeResizePass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
FLOOR = 'mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor"'


def _resize(x: str, y: str, attrs: str, scales: str | None = None, sizes: str | None = None) -> object:
    if scales is not None:
        args = f"s = Constant <value = float[4] {{{scales}}}> () y = Resize <{attrs}> (x, , s)"
    else:
        args = f"s = Constant <value = int64[4] {{{sizes}}}> () y = Resize <{attrs}> (x, , , s)"
    return parse(HEADER + f"g (float[{x}] x) => (float[{y}] y) {{ {args} }}")


DOWN = {
    "x0.5 asymmetric floor": ("1,3,16,12", "1,3,8,6", FLOOR, "1,1,0.5,0.5", None),
    "x0.5 half_pixel (odd start)": ("1,3,16,12", "1,3,8,6", 'mode = "nearest"', "1,1,0.5,0.5", None),
    "x1/3 by sizes": ("1,3,12,12", "1,3,4,4", 'mode = "nearest"', None, "1,3,4,4"),
    "H only": ("1,3,12,5", "1,3,6,5", FLOOR, "1,1,0.5,1", None),
}
UP = {
    "x16": ("1,3,4,3", "1,3,64,48", FLOOR, "1,1,16,16", 2),
    "x32 half_pixel": ("1,3,4,3", "1,3,128,96", 'mode = "nearest"', "1,1,32,32", 2),
    "x64": ("1,2,2,2", "1,2,128,128", FLOOR, "1,1,64,64", 2),
}


@pytest.mark.parametrize("case", sorted(DOWN))
def test_integer_downscale_becomes_strided_slice(case: str) -> None:
    proto = _resize(*DOWN[case])
    model, changed, ctx = run_pass(LegalizeResizePass(), proto)
    assert changed and ctx.stats == {"slice": 1} and ops(model) == {"Slice": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(UP))
def test_large_power_of_two_upscale_becomes_chain(case: str) -> None:
    *args, resizes = UP[case]
    proto = _resize(*args)
    model, changed, ctx = run_pass(LegalizeResizePass(), proto)
    assert changed and ctx.stats == {"chain": 1} and ops(model) == {"Resize": resizes}
    for node in model.graph.nodes:
        assert max(float(s) for s in node.inputs[2].values) in (2.0, 4.0, 8.0)
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "args",
    [
        ("1,3,4,3", "1,3,12,9", FLOOR, "1,1,3,3", None),  # x3: no NPU form
        ("1,3,4,3", "1,3,8,6", FLOOR, "1,1,2,2", None),  # x2: already supported
        ("1,3,4,3", "1,3,8,6", 'mode = "linear"', "1,1,2,2", None),
        ("1,3,4,4", "1,3,8,16", FLOOR, "1,1,2,4", None),  # unequal factors
    ],
)
def test_other_resizes_are_kept(args: tuple[str, str, str, str | None, str | None]) -> None:
    _, changed, _ = run_pass(LegalizeResizePass(), _resize(*args))
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(LegalizeResizePass(), _resize(*UP["x16"][:-1]))
    _, changed, _ = run_pass(LegalizeResizePass(), model.to_proto())
    assert not changed
