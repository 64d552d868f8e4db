"""nirc.accuracy: int8 SNR of a model on calibration data, the guard that refuses float-exact rewrites
that cost int8 accuracy, and per-layer error. Real LiteRT and ONNX Runtime throughout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from nirc_testing import assert_same_function, parse

from nirc.accuracy import AccuracyGuard, _drop, layer_errors, output_snr, worst_steps
from nirc.backend import emit
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager
from nirc.quant import CalibrationSet
from nirc.tflite.quantize import WEIGHT_RANGE, weight_scales

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def two_convs() -> onnx.ModelProto:
    """Conv 3x3 -> ReLU -> Conv 1x1, with shapes inferred (the emitter needs them)."""
    rng = np.random.default_rng(0)
    return IRModel.load(_two_convs_text(rng)).to_proto()


def _two_convs_text(rng: np.random.Generator) -> onnx.ModelProto:
    return parse(
        HEADER
        + """
    g (float[1,8,8,8] x) => (float[1,8,8,8] y) {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        r = Relu (a)
        y = Conv <kernel_shape = [1, 1]> (r, w2, b2)
    }""",
        w1=(rng.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32),
        b1=(rng.standard_normal(8) * 0.1).astype(np.float32),
        w2=(rng.standard_normal((8, 8, 1, 1)) / 3).astype(np.float32),
        b2=(rng.standard_normal(8) * 0.1).astype(np.float32),
    )


def calibration(count: int = 8) -> CalibrationSet:
    rng = np.random.default_rng(1)
    samples = tuple({"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(count))
    return CalibrationSet(samples, synthetic=False, source="test")


@dataclass(frozen=True)
class WidenChannelPass(Pass):
    """Scale conv 1's output channel 0 by ``factor`` and conv 2's input channel 0 by ``1/factor``.

    Exact in float (ReLU is positively homogeneous) but the ReLU output's per-tensor int8 range grows
    ``factor`` times, so every other channel loses resolution: the kind of rewrite the guard exists for.
    """

    name: ClassVar[str] = "widen-channel"
    exact: ClassVar[bool] = True
    accuracy_guarded: ClassVar[bool] = True
    factor: float = 200.0

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        tensors = model.graph.tensors()
        for name, scale in (("w1", self.factor), ("b1", self.factor)):
            values = np.array(tensors[name].values)
            values[0] *= scale
            tensors[name].values = values
        w2 = np.array(tensors["w2"].values)
        w2[:, 0] /= self.factor
        tensors["w2"].values = w2
        return True


def test_output_snr_is_finite_and_high_for_a_small_model() -> None:
    snr = output_snr(two_convs(), calibration())
    assert set(snr) == {"y"} and 25.0 < snr["y"] < 80.0


def test_widen_channel_is_exact_in_float_but_costs_int8() -> None:
    proto = two_convs()
    model = IRModel.load(proto)
    WidenChannelPass().run(model, PassContext())
    after = model.to_proto()
    assert_same_function(proto, after, rtol=1e-4, atol=1e-4)
    verdict = AccuracyGuard(calibration()).judge(proto, after)
    assert verdict.drop > 3.0 and not verdict.ok


def test_guard_reverts_a_pass_that_costs_int8_accuracy() -> None:
    proto = two_convs()
    model = IRModel.load(proto)
    guard = AccuracyGuard(calibration(), max_snr_drop=0.5)
    (record,) = PassManager([WidenChannelPass()]).run(model, PassContext(accuracy=guard))
    assert not record.changed
    assert record.stats == {"accuracy_guard.reverted": 1}
    (decision,) = record.decisions
    judged = decision["accuracy_guard"]
    assert judged["kept"] is False and judged["snr_drop_db"] > 0.5 and judged["max_snr_drop_db"] == 0.5
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(next(i for i in model.to_proto().graph.initializer if i.name == "w1")),
        onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w1")),
    )
    assert guard.measurements == 2


def test_guard_keeps_it_within_a_wide_tolerance_and_without_a_guard() -> None:
    model = IRModel.load(two_convs())
    (record,) = PassManager([WidenChannelPass()]).run(
        model, PassContext(accuracy=AccuracyGuard(calibration(), max_snr_drop=100.0))
    )
    assert record.changed and record.decisions[0]["accuracy_guard"]["kept"] is True
    (unguarded,) = PassManager([WidenChannelPass()]).run(IRModel.load(two_convs()), PassContext())
    assert unguarded.changed and unguarded.decisions == []


def test_guard_caches_by_model_content() -> None:
    guard = AccuracyGuard(calibration())
    proto = two_convs()
    first = guard.snr(proto)
    assert guard.snr(two_convs()) == first and guard.measurements == 1


def test_guard_measures_again_on_other_inputs() -> None:
    """The same model on re-laid-out (here: scaled) inputs is a new measurement, not a cache hit."""
    guard = AccuracyGuard(calibration())
    proto = two_convs()
    guard.snr(proto)
    scaled = [{k: v * 3.0 for k, v in s.items()} for s in guard.calibration.samples]
    guard.snr(proto, scaled)
    assert guard.measurements == 2


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_guard_rejects_a_bad_tolerance(bad: float) -> None:
    with pytest.raises(ValueError, match="max SNR drop"):
        AccuracyGuard(calibration(), max_snr_drop=bad)


def test_drop_handles_exact_models() -> None:
    assert _drop(math.inf, math.inf) == 0.0
    assert _drop(math.inf, 40.0) == math.inf
    assert _drop(30.0, math.inf) == -math.inf
    assert _drop(30.0, 28.5) == pytest.approx(1.5)


def test_layer_errors_follow_the_graph_and_find_where_error_enters() -> None:
    proto = two_convs()
    model = IRModel.load(proto)
    WidenChannelPass().run(model, PassContext())
    widened = model.to_proto()
    calib = calibration()
    errors = layer_errors(widened, emit(widened, dtype="int8", calib=calib).tflite, calib.samples[:4])
    names = [e.tensor for e in errors]
    assert names[0] == "x" and errors[0].index == -1  # the quantized graph input: the first layer's reference
    assert names[1:] == sorted(names[1:], key=[n.output[0] for n in widened.graph.node].index)
    assert "y" in names and all(math.isfinite(e.snr_db) for e in errors)
    worst = worst_steps(widened, errors, count=2)
    assert worst and worst[0]["drop_db"] >= worst[-1]["drop_db"] > 0
    assert all(w["tensor"] != "x" and w["input_snr_db"] is not None for w in worst)


def test_mse_weight_ranges_never_raise_weight_error_and_max_is_the_default() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((4, 8, 3, 3))
    weight[:, :, 1, 1] *= 30.0  # a dominant centre tap, as after re-parameterisation
    full = weight_scales(weight, 0, None, 1.0)
    np.testing.assert_allclose(full, np.abs(weight).reshape(4, -1).max(axis=1) / 127, rtol=1e-6)
    token = WEIGHT_RANGE.set("mse")
    try:
        clipped = weight_scales(weight, 0, None, 1.0)
    finally:
        WEIGHT_RANGE.reset(token)
    assert np.all(clipped <= full)

    def error(scales: np.ndarray) -> float:
        s = scales.astype(np.float64)[:, None, None, None]
        return float(np.sum((np.clip(np.round(weight / s), -127, 127) * s - weight) ** 2))

    assert error(clipped) <= error(full)


def test_guard_follows_input_relayouts_of_earlier_passes() -> None:
    """After a pass that re-lays out the model input (a stem rewrite), later verdicts feed the new layout."""

    @dataclass(frozen=True)
    class PadInput(Pass):
        """Stand-in for a stem rewrite: the model after it takes 10 input channels."""

        name: ClassVar[str] = "pad-input"
        exact: ClassVar[bool] = True

        def adapt_inputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"x": np.pad(feed["x"], ((0, 0), (0, 2), (0, 0), (0, 0)))}

        def run(self, model: IRModel, ctx: PassContext) -> bool:
            return True

    guard = AccuracyGuard(calibration(2))
    PassManager([PadInput()]).run(IRModel.load(two_convs()), PassContext(accuracy=guard))
    assert all(s["x"].shape == (1, 10, 8, 8) for s in guard.calibration.samples)


def test_two_int8_forms_are_judged_by_their_output_checks() -> None:
    """``--npu-format auto`` keeps the faster TOSA form only within the guard's tolerance of the TFLite form.

    The checks are real: ONNX Runtime-style float outputs against two int8 results, one of them coarser.
    """
    from nirc.accuracy import judge_outputs
    from nirc.tflite.model import TensorIO
    from nirc.validate import check_output

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 10)).astype(np.float32)
    io = TensorIO("logits", (1, 10), (1, 10), None, "float32", None, None)
    fine = check_output(io, ref, ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.01)
    coarse = check_output(io, ref, ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.05)
    assert judge_outputs([fine], [coarse], 0.5).drop > 10 and not judge_outputs([fine], [coarse], 0.5).ok
    assert judge_outputs([coarse], [fine], 0.5).ok
    assert judge_outputs([fine], [coarse], 20.0).ok
