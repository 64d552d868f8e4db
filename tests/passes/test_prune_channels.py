"""prune-channels: which channels go, that the refit reconstructs what it can, the couplings, the
calibration fallback, and the real cost/accuracy trade-off on the trained digits CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc.passes._channels import ChannelSpaces
from nirc.passes.prune_channels import PruneChannelsPass, channel_scores, keep_count
from nirc_testing import ort_run, parse

from nirc.backend import input_shapes
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry
from nirc.quant import CalibrationSet, load_calibration
from nirc.verify import run_tensors

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
F32 = np.float32
ROOT = Path(__file__).resolve().parents[2]
REGISTRY = load_registry()
TARGET = REGISTRY.get_target("ethos-u65")


def _rand(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _calibration(proto: onnx.ModelProto, count: int = 64, seed: int = 3) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    shapes = input_shapes(proto)
    samples = tuple({n: rng.standard_normal(s).astype(F32) for n, s in shapes.items()} for _ in range(count))
    return CalibrationSet(samples=samples, synthetic=False, source="test data")


def _run(
    proto: onnx.ModelProto, calib: bool = True, **options: object
) -> tuple[IRModel, bool, PassContext, PruneChannelsPass]:
    model = IRModel.load(proto)
    ctx = PassContext(target=TARGET, calibration=_calibration(proto) if calib else None)
    pass_ = PruneChannelsPass(measure=False, **options)  # type: ignore[arg-type]
    changed = pass_.run(model, ctx)
    return model, changed, ctx, pass_


def _shape(model: IRModel, name: str) -> list[int]:
    return [int(d) for d in model.graph.tensors()[name].shape]


def _outputs_close(before: onnx.ModelProto, after: onnx.ModelProto, rtol: float, atol: float) -> None:
    onnx.checker.check_model(after, full_check=True)
    rng = np.random.default_rng(99)
    for _ in range(3):
        feed = {n: rng.standard_normal(s).astype(F32) for n, s in input_shapes(before).items()}
        for ref, got in zip(ort_run(before, feed), ort_run(after, feed), strict=True):
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


def test_keep_count_rounds_down_to_the_alignment_and_never_to_zero() -> None:
    assert keep_count(17, 16, 0.0) == 16
    assert keep_count(24, 16, 0.0) == 16
    assert keep_count(70, 16, 0.0) == 64
    assert keep_count(32, 16, 0.0) == 32
    assert keep_count(32, 16, 0.25) == 16
    assert keep_count(40, 16, 0.6) == 16  # floor(16) -> 16
    assert keep_count(40, 16, 0.9) == 16  # not below one brick
    assert keep_count(10, 16, 0.0) == 10  # smaller than a brick: left alone
    assert keep_count(24, 8, 0.0) == 24


def test_scores_l2_prefers_big_filters_and_median_prefers_outliers() -> None:
    rows = np.array([[1.0, 0.0], [1.1, 0.0], [0.9, 0.0], [0.0, 5.0], [0.1, 0.0]])
    assert list(np.argsort(-channel_scores(rows, "l2"))[:2]) == [3, 1]
    gm = channel_scores(rows, "geometric-median")
    assert int(np.argmax(gm)) == 3  # far from the others: irreplaceable
    assert gm[0] < gm[3]
    with pytest.raises(ValueError):
        channel_scores(rows, "random")  # type: ignore[arg-type]


def _chain_with(w0: np.ndarray, b0: np.ndarray) -> onnx.ModelProto:
    return parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,8,6,6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (a)
        y = Conv <pads = [1, 1, 1, 1]> (r, w1, b1)
    }""",
        w0=w0,
        b0=b0,
        w1=_rand(8, w0.shape[0], 3, 3, seed=3),
        b1=_rand(8, seed=4),
    )


def test_all_zero_channels_are_the_ones_l2_removes_and_nothing_changes() -> None:
    w0, b0 = _rand(20, 4, 3, 3, seed=1), np.abs(_rand(20, seed=2))
    w0[[2, 7, 11, 19]] = 0.0
    b0[[2, 7, 11, 19]] = 0.0
    proto = _chain_with(w0, b0)
    model, changed, ctx, pass_ = _run(proto, refit=False)
    assert changed and _shape(model, "r") == [1, 16, 6, 6]
    (decision,) = pass_.decisions
    assert decision.kept == tuple(i for i in range(20) if i not in (2, 7, 11, 19))
    assert ctx.stats == {"pruned_spaces": 1, "removed_channels": 4}
    _outputs_close(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    assert pass_.report["snr_db"]["y"] == float("inf")


def test_refit_absorbs_channels_that_duplicate_kept_ones() -> None:
    # Channels 16..19 are half-size copies of 0..3: after ReLU they are exactly 0.5x those, so the
    # reader can take them over by least squares (W[:, j] + 0.5 W[:, 16 + j]), and L2 removes them.
    w0, b0 = _rand(20, 4, 3, 3, seed=1), _rand(20, seed=2)
    w0[16:] = 0.5 * w0[:4]
    b0[16:] = 0.5 * b0[:4]
    proto = _chain_with(w0, b0)
    model, changed, _, pass_ = _run(proto, ridge=1e-9)
    assert changed and pass_.decisions[0].kept == tuple(range(16))
    before, after = pass_.decisions[0].fit_error_before, pass_.decisions[0].fit_error_after
    assert before is not None and after is not None and before > 1e-2 and after < 1e-8
    _outputs_close(proto, model.to_proto(), rtol=1e-3, atol=1e-3)


def test_without_refit_the_same_duplicates_change_the_output() -> None:
    w0, b0 = _rand(20, 4, 3, 3, seed=1), _rand(20, seed=2)
    w0[16:] = 0.5 * w0[:4]
    b0[16:] = 0.5 * b0[:4]
    proto = _chain_with(w0, b0)
    model, _, _, pass_ = _run(proto, refit=False)
    with pytest.raises(AssertionError):
        _outputs_close(proto, model.to_proto(), rtol=1e-3, atol=1e-3)
    assert pass_.report["snr_db"]["y"] < 40


def test_residual_coupled_tensors_lose_the_same_channels_and_gemm_reader_is_refit() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,6,6] x) => (float[1,10] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (a)
        d = Conv <group = 24, pads = [1, 1, 1, 1]> (r, wd, bd)
        dr = Relu (d)
        p = Conv (dr, wp, bp)
        s = Add (r, p)
        sr = Relu (s)
        g = GlobalAveragePool (sr)
        f = Flatten (g)
        y = Gemm <transB = 1> (f, wf, bf)
    }""",
        w0=_rand(24, 8, 3, 3, seed=1) * F32(0.3),
        b0=_rand(24, seed=2),
        wd=_rand(24, 1, 3, 3, seed=3),
        bd=_rand(24, seed=4),
        wp=_rand(24, 24, 1, 1, seed=5) * F32(0.2),
        bp=_rand(24, seed=6),
        wf=_rand(10, 24, seed=7),
        bf=_rand(10, seed=8),
    )
    model, changed, _, pass_ = _run(proto, criterion="geometric-median")
    assert changed
    (decision,) = pass_.decisions
    assert set(decision.layers) == {"Conv_0", "Conv_4"} and "Gemm_9" in decision.readers
    assert all(_shape(model, t)[1] == 16 for t in ("a", "r", "d", "p", "s", "f"))
    assert _shape(model, "y") == [1, 10]
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert decision.fit_error_after is not None and decision.fit_error_before is not None
    assert decision.fit_error_after < decision.fit_error_before
    assert set(pass_.report["top1_agreement"]) == {"y"}


def test_synthetic_fallback_is_flagged_when_the_context_has_no_calibration() -> None:
    proto = _chain_with(_rand(20, 4, 3, 3, seed=1), _rand(20, seed=2))
    _, changed, ctx, pass_ = _run(proto, calib=False)
    assert changed and ctx.stats["synthetic_calibration"] == 1
    assert pass_.report["synthetic"] and "synthetic" in pass_.report["warning"]
    _, _, _, with_data = _run(proto)
    assert not with_data.report["synthetic"] and with_data.report["source"] == "test data"
    assert with_data.report["samples_fit"] == 48 and with_data.report["samples_eval"] == 16


def test_aligned_spaces_outputs_and_second_runs_are_left_alone() -> None:
    aligned = _chain_with(_rand(32, 4, 3, 3, seed=1), _rand(32, seed=2))
    assert not _run(aligned)[1]
    as_output = parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,20,6,6] a) {
        a = Conv (x, w)
    }""",
        w=_rand(20, 4, 1, 1, seed=1),
    )
    assert not _run(as_output)[1]
    model, changed, _, _ = _run(_chain_with(_rand(20, 4, 3, 3, seed=1), _rand(20, seed=2)))
    assert changed
    again = PruneChannelsPass(measure=False)
    assert not again.run(model, PassContext(target=TARGET))


def test_options_are_validated_and_the_pass_is_opt_in() -> None:
    for bad in ({"ratio": 1.0}, {"ratio": -0.1}, {"align": 0}, {"criterion": "random"}, {"holdout": 1.0}):
        with pytest.raises(ValueError):
            PruneChannelsPass(**bad)  # type: ignore[arg-type]
    assert REGISTRY.get_pass("prune-channels") is PruneChannelsPass
    assert not PruneChannelsPass.exact
    for target in REGISTRY.targets.values():
        assert "prune-channels" not in target.default_pipeline


def test_align_option_and_decisions_in_the_context() -> None:
    proto = _chain_with(_rand(20, 4, 3, 3, seed=1), _rand(20, seed=2))
    model = IRModel.load(proto)
    ctx = PassContext()
    assert PruneChannelsPass(align=8, measure=False).run(model, ctx)
    assert _shape(model, "r")[1] == 16  # 20 -> 16 with align 8 (the target-less default would also give 16)
    model = IRModel.load(proto)
    assert PruneChannelsPass(align=12, measure=False).run(model, PassContext())
    assert _shape(model, "r")[1] == 12
    assert ctx.decisions[-1]["summary"]["samples_eval"] > 0


def test_digits_cnn_keeps_its_accuracy_and_gets_faster_on_vela() -> None:
    """The real check: a trained model, real held-out digits, Vela's estimate."""
    model = IRModel.load(ROOT / "examples" / "digits_cnn.onnx")
    canonical = [REGISTRY.get_pass(n)() for n in TARGET.default_pipeline if n not in TARGET.hw_passes]
    PassManager(canonical).run(model, PassContext(target=TARGET))
    before = model.to_proto()
    calib = load_calibration(ROOT / "examples" / "digits_calib.npz", input_shapes(before), count=128)
    ctx = PassContext(target=TARGET, calibration=calib)
    pass_ = PruneChannelsPass()
    assert pass_.run(model, ctx)
    after = model.to_proto()
    assert [(d.channels_before, d.channels_after) for d in pass_.decisions] == [(24, 16), (40, 32), (72, 64)]
    val = np.load(ROOT / "examples" / "digits_val.npz")
    feeds = [{"input": val["input"][i : i + 1]} for i in range(0, len(val["labels"]), 2)]
    labels = val["labels"][::2]
    out = before.graph.output[0].name
    acc_before = np.mean(run_tensors(before, feeds, [out])[out].argmax(1) == labels)
    acc_after = np.mean(run_tensors(after, feeds, [out])[out].argmax(1) == labels)
    assert acc_before > 0.99 and acc_after > 0.95
    cycles_before, cycles_after = pass_.report["cycles"]
    assert cycles_after < 0.85 * cycles_before
    assert pass_.report["snr_db"][out] > 8


def test_spaces_key_is_stable_across_pruning() -> None:
    proto = _chain_with(_rand(20, 4, 3, 3, seed=1), _rand(20, seed=2))
    model, _, _, _ = _run(proto)
    assert ChannelSpaces(model.graph).space_of["r"].key == "a"


def test_concat_operands_are_pruned_inside_the_concat_and_its_reader_is_refit() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,6,6] x) => (float[1,16,6,6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
        ar = Relu (a)
        b = Conv (x, wb, bb)
        br = Relu (b)
        c = Concat <axis = 1> (ar, br)
        y = Conv <pads = [1, 1, 1, 1]> (c, w1, b1)
    }""",
        wa=_rand(20, 8, 3, 3, seed=1),
        ba=_rand(20, seed=2),
        wb=_rand(18, 8, 1, 1, seed=3),
        bb=_rand(18, seed=4),
        w1=_rand(16, 38, 3, 3, seed=5),
        b1=_rand(16, seed=6),
    )
    model, changed, _, pass_ = _run(proto)
    assert changed and [(d.channels_before, d.channels_after) for d in pass_.decisions] == [(20, 16), (18, 16)]
    assert _shape(model, "c") == [1, 32, 6, 6] and _shape(model, "y") == [1, 16, 6, 6]
    assert all(d.readers == ("Conv_5",) for d in pass_.decisions)
    onnx.checker.check_model(model.to_proto(), full_check=True)
    errors = [(d.fit_error_before, d.fit_error_after) for d in pass_.decisions]
    assert all(b is not None and a is not None and a < b for b, a in errors)
