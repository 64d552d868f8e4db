from __future__ import annotations

import numpy as np
import onnx
from nirc.passes.merge_slices import MergeSlicesPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
I64 = np.int64


def _halves(second_start: int, second_end: int) -> onnx.ModelProto:
    """ShuffleNet's ``x.chunk(2, dim=1)`` as the TorchScript exporter writes it: two Slices."""
    width = min(second_end, 8) - second_start
    return parse(
        HEADER
        + f"""
    g (float[1,8,4,4] x) => (float[1,4,4,4] y, float[1,{width},4,4] z) {{
        a = Relu (x)
        lo = Slice (a, s0, e0, ax)
        hi = Slice (a, s1, e1, ax)
        y = Sigmoid (lo)
        z = Tanh (hi)
    }}""",
        s0=np.array([0], I64),
        e0=np.array([4], I64),
        s1=np.array([second_start], I64),
        e1=np.array([second_end], I64),
        ax=np.array([1], I64),
    )


def test_two_halves_become_one_split() -> None:
    proto = _halves(4, np.iinfo(np.int64).max)  # end past the dim, as exporters write "to the end"
    model, changed, ctx = run_pass(MergeSlicesPass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(proto)["Slice"] == 2 and ops(out) == {"Relu": 1, "Split": 1, "Sigmoid": 1, "Tanh": 1}
    assert ctx.stats == {"merged_slices": 2, "splits": 1}
    assert_same_function(proto, out, rtol=0, atol=0)


def test_unbind_along_axis_0_out_of_order() -> None:
    """dynamo's ``qkv.unbind(0)``: three Slices along the leading axis, listed in any order."""
    proto = parse(
        HEADER
        + """
    g (float[3,2,5] x) => (float[1,2,5] q, float[1,2,5] k, float[1,2,5] v) {
        v = Slice (x, two, three, zero)
        q = Slice (x, zero, one, zero)
        k = Slice (x, one, two, zero)
    }""",
        zero=np.array([0], I64),
        one=np.array([1], I64),
        two=np.array([2], I64),
        three=np.array([3], I64),
    )
    model, changed, _ = run_pass(MergeSlicesPass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Split": 1}
    assert [o.name for o in out.graph.output] == ["q", "k", "v"]
    assert list(out.graph.node[0].output) == ["q", "k", "v"]
    assert_same_function(proto, out, rtol=0, atol=0)


def test_gap_overlap_and_steps_are_kept() -> None:
    for start, end in ((5, 8), (3, 7)):  # a gap (channel 4 unread), an overlap (channel 3 twice)
        model, changed, _ = run_pass(MergeSlicesPass(), _halves(start, end))
        assert not changed and ops(model)["Slice"] == 2
    strided = parse(
        HEADER
        + """
    g (float[1,8] x) => (float[1,4] y, float[1,4] z) {
        y = Slice (x, zero, eight, one, two)
        z = Slice (x, one, eight, one, two)
    }""",
        zero=np.array([0], I64),
        one=np.array([1], I64),
        two=np.array([2], I64),
        eight=np.array([8], I64),
    )
    model, changed, _ = run_pass(MergeSlicesPass(), strided)
    assert not changed and ops(model)["Slice"] == 2


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(MergeSlicesPass(), _halves(4, 8))
    _, changed, _ = run_pass(MergeSlicesPass(), model.to_proto())
    assert not changed
