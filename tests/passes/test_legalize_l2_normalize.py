from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from nirc.passes.legalize_l2_normalize import LegalizeL2NormalizePass
from nirc_testing import assert_same_function, ops, parse, run_pass

from nirc.pipeline import optimize

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def test_torch_normalize_becomes_mean_of_squares_and_rsqrt() -> None:
    """F.normalize(x, dim=-1) as both PyTorch exporters write it: ReduceL2 -> Clip(min) -> Expand -> Div."""
    proto = parse(
        HEADER
        + """
    g (float[1,4,6,10] x) => (float[1,4,6,10] y) {
        n = ReduceL2 <keepdims = 1> (x, last)
        c = Clip (n, eps)
        e = Expand (c, shape)
        y = Div (x, e)
    }""",
        last=np.array([-1], np.int64),
        eps=np.array(1e-12, np.float32),
        shape=np.array([1, 4, 6, 10], np.int64),
    )
    model, changed, ctx = run_pass(LegalizeL2NormalizePass(), proto)
    assert changed and ctx.stats == {"l2_normalize": 1}
    counts = ops(model)
    assert "ReduceL2" not in counts and "Div" not in counts and counts["Pow"] == 1 and counts["Max"] == 1
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_an_all_zero_row_stays_zero() -> None:
    """The eps clamp moves inside the square root, so a zero row gives 0, not NaN."""
    proto = parse(
        HEADER
        + """
    g (float[2,8] x) => (float[2,8] y) {
        n = ReduceL2 <keepdims = 1> (x, last)
        c = Max (n, eps)
        y = Div (x, c)
    }""",
        last=np.array([1], np.int64),
        eps=np.array([1e-6], np.float32),
    )
    model, changed, _ = run_pass(LegalizeL2NormalizePass(), proto)
    assert changed
    x = np.vstack([np.zeros(8, np.float32), np.arange(8, dtype=np.float32)])
    (before,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
    (after,) = ort.InferenceSession(model.to_proto().SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert not after[0].any()


def test_keeps_a_norm_of_another_tensor_or_read_twice() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,8] x, float[2,8] z) => (float[2,8] y, float[2,8] w, float[2,1] n2) {
        n = ReduceL2 <keepdims = 1> (z, last)
        y = Div (x, n)
        n2 = ReduceL2 <keepdims = 1> (x, last)
        w = Div (x, n2)
    }""",
        last=np.array([1], np.int64),
    )
    model, changed, _ = run_pass(LegalizeL2NormalizePass(), proto)
    assert not changed and ops(model)["ReduceL2"] == 2


def test_second_run_changes_nothing() -> None:
    proto = parse(
        HEADER + "g (float[2,8] x) => (float[2,8] y) { n = ReduceL2 <keepdims = 1> (x, ax)\n y = Div (x, n) }",
        ax=np.array([1], np.int64),
    )
    model, changed, _ = run_pass(LegalizeL2NormalizePass(), proto)
    assert changed
    _, again, _ = run_pass(LegalizeL2NormalizePass(), model.to_proto())
    assert not again


def _conv_normalize_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return parse(
        HEADER
        + """
    g (float[1,16,8,8] x) => (float[1,16,8,8] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        r = Reshape (c, tokens)
        n = ReduceL2 <keepdims = 1> (r, last)
        cl = Clip (n, eps)
        e = Expand (cl, tokens)
        q = Div (r, e)
        q4 = Reshape (q, image)
        y = Conv (q4, w2)
    }""",
        w=(rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32),
        w2=(rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32),
        tokens=np.array([1, 16, 64], np.int64),
        image=np.array([1, 16, 8, 8], np.int64),
        last=np.array([-1], np.int64),
        eps=np.array(1e-12, np.float32),
    )


def test_normalize_runs_on_the_npu_at_the_float_islands_accuracy() -> None:
    """Real Vela and LiteRT: no CPU op is left, and int8 SNR stays within 0.5 dB of the float CPU island."""
    proto = _conv_normalize_conv()
    legal = optimize(proto, "ethos-u65", verify=True)
    island = optimize(proto, "ethos-u65", skip=["legalize-l2-normalize"])
    assert legal.report["vela"]["cpu_ops"] == 0 and island.report["vela"]["cpu_ops"] > 0
    (legal_out,), (island_out,) = legal.report["validation"]["outputs"], island.report["validation"]["outputs"]
    assert legal_out["snr_db"] >= island_out["snr_db"] - 0.5 and legal_out["snr_db"] > 25
