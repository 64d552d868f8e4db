from __future__ import annotations

import numpy as np
from nirc.passes.legalize_reduce_sum import LegalizeReduceSumPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def test_sums_become_means_times_count() -> None:
    """MobileViTv2's context sum over the last axis (keepdims) and a sum over C and space (dropping axes)."""
    proto = parse(
        HEADER
        + """
    g (float[1,4,3,5] x) => (float[1,4,3,1] y, float[1] z) {
        y = ReduceSum <keepdims = 1> (x, last)
        z = ReduceSum <keepdims = 0> (x, chw)
    }""",
        last=np.array([-1], np.int64),
        chw=np.array([1, 2, 3], np.int64),
    )
    model, changed, ctx = run_pass(LegalizeReduceSumPass(), proto)
    assert changed and ctx.stats == {"reduce_sum": 2}
    counts = ops(model)
    assert "ReduceSum" not in counts and counts["ReduceMean"] == 3 and counts["Mul"] == 2  # C+space in two stages
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


def test_keeps_noop_and_integer_sums() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4] x, int64[1,4] i) => (float[1,4] y, int64[1,1] j) {
        y = ReduceSum <noop_with_empty_axes = 1> (x)
        j = ReduceSum <keepdims = 1> (i, one)
    }""",
        one=np.array([1], np.int64),
    )
    model, changed, _ = run_pass(LegalizeReduceSumPass(), proto)
    assert not changed and ops(model)["ReduceSum"] == 2


def test_second_run_changes_nothing() -> None:
    proto = parse(HEADER + "g (float[2,6] x) => (float[2,1] y) { y = ReduceSum (x, ax) }", ax=np.array([1], np.int64))
    model, _, _ = run_pass(LegalizeReduceSumPass(), proto)
    _, changed, _ = run_pass(LegalizeReduceSumPass(), model.to_proto())
    assert not changed
