from __future__ import annotations

import numpy as np
import onnx
import pytest
from nirc.passes.legalize_reduce_mean import LegalizeReduceMeanPass, split
from nirc_testing import assert_same_function, ops, parse, run_pass

from nirc.pipeline import optimize

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def test_groupnorm_style_mean_over_one_long_axis_is_split() -> None:
    """PyTorch GroupNorm(1, C) on a token map: a mean over 1x1x8192, kept and dropped dims."""
    proto = parse(
        HEADER
        + """
    g (float[1,2,8192] x) => (float[1,2,1] y, float[1,2] z) {
        y = ReduceMean <keepdims = 1> (x, last)
        z = ReduceMean <keepdims = 0> (x, last)
    }""",
        last=np.array([2], np.int64),
    )
    model, changed, ctx = run_pass(LegalizeReduceMeanPass(), proto)
    assert changed and ctx.stats == {"reduce_mean_split": 2}
    assert ops(model)["ReduceMean"] == 4
    assert max(_reduced_axis_sizes(model.to_proto())) <= 4095
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def _reduced_axis_sizes(proto: onnx.ModelProto) -> list[int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input]}  # fmt: skip
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    means = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    return [shapes[n.input[0]][int(a)] for n in means for a in consts[n.input[1]]]


def test_middle_and_multi_axis_reductions_view_as_three_d() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,128,40,3] x) => (float[2,1,1,3] y) {
        y = ReduceMean <keepdims = 1> (x, mid)
    }""",
        mid=np.array([1, 2], np.int64),
    )
    model, changed, _ = run_pass(LegalizeReduceMeanPass(max_axis=100), proto)
    assert changed and ops(model)["ReduceMean"] == 2
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_keeps_short_axes_gaps_and_unfactorable_counts() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,16,4096] x, float[1,4099] p, float[4096,2,4096] q) => (float[1,1,4096] y, float[1,1] z, float[1,2,1] w) {
        y = ReduceMean <keepdims = 1> (x, c)
        z = ReduceMean <keepdims = 1> (p, one)
        w = ReduceMean <keepdims = 1> (q, ends)
    }""",
        c=np.array([1], np.int64),
        one=np.array([1], np.int64),
        ends=np.array([0, 2], np.int64),
    )
    model, changed, _ = run_pass(LegalizeReduceMeanPass(), proto)
    assert not changed and ops(model)["ReduceMean"] == 3


def test_second_run_changes_nothing() -> None:
    proto = parse(HEADER + "g (float[1,1,65536] x) => (float[1,1,1] y) { y = ReduceMean (x, ax) }",
                  ax=np.array([2], np.int64))  # fmt: skip
    model, changed, _ = run_pass(LegalizeReduceMeanPass(), proto)
    assert changed
    _, again, _ = run_pass(LegalizeReduceMeanPass(), model.to_proto())
    assert not again


@pytest.mark.parametrize(("count", "expected"), [(65536, (32, 2048)), (8192, (4, 2048)), (4099, None)])
def test_split_factors_fit(count: int, expected: tuple[int, int] | None) -> None:
    parts = split(count, 4095)
    assert parts == expected
    if parts is not None:
        assert parts[0] * parts[1] == count and max(parts) <= 4095


def test_groupnorm_over_a_long_token_axis_runs_on_the_npu() -> None:
    """Real Vela: the 1 x 1 x 8192 mean of a GroupNorm(1, C) export goes to the CPU unless split."""
    rng = np.random.default_rng(0)
    proto = parse(
        HEADER
        + """
    g (float[1,32,16,16] x) => (float[1,32,4,64] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        r = Reshape (c, flat)
        n = InstanceNormalization <epsilon = 1e-5> (r, one, zero)
        y = Reshape (n, image)
    }""",
        w=(rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32),
        flat=np.array([1, 1, 8192], np.int64),
        image=np.array([1, 32, 4, 64], np.int64),  # MobileViTv2 unfolds patches: not the input's shape
        one=np.ones(1, np.float32),
        zero=np.zeros(1, np.float32),
    )
    # The TFLite form, where the MEAN is Vela's to place (the TOSA form lifts it to REDUCE_SUMs).
    split_ = optimize(proto, "ethos-u65", verify=True, npu_format="tflite")
    kept = optimize(proto, "ethos-u65", skip=["legalize-reduce-mean"], npu_format="tflite")
    assert split_.report["vela"]["cpu_ops"] == 0 and kept.report["vela"]["cpu_ops"] > 0
    (out,) = split_.report["validation"]["outputs"]
    assert out["snr_db"] > 25
