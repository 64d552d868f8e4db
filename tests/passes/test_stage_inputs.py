"""stage-inputs: an image input copied by an identity LeakyRelu when Vela's estimate drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from nirc.passes.stage_inputs import StageInputsPass
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import compile_with_vela
from nirc_testing import assert_same_function, ops, parse

from nirc.backend import emit, input_shapes
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.quant import load_calibration
from nirc.validate import run_tflite

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
U65 = next(t for t in ETHOS_U_TARGETS if t.name == "ethos-u65-256")


def _stem(channels: int = 3, size: int = 224) -> onnx.ModelProto:
    """A 3x3 stride-2 conv to 16 channels reading the image, as in MobileNetV3's stem."""
    rng = np.random.default_rng(0)
    return parse(
        HEADER
        + f"""g (float[1,{channels},{size},{size}] x) => (float[1,16,{size // 2},{size // 2}] y) {{
            c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)
            y = Relu (c)
        }}""",
        w=(rng.standard_normal((16, channels, 3, 3)) * 0.3).astype(np.float32),
        b=(rng.standard_normal(16) * 0.1).astype(np.float32),
    )


def _run(proto: onnx.ModelProto, target: object = U65) -> tuple[IRModel, bool, PassContext]:
    model = IRModel.load(proto)
    ctx = PassContext(target=target)  # type: ignore[arg-type]
    return model, StageInputsPass().run(model, ctx), ctx


def test_image_input_is_staged_when_vela_says_so() -> None:
    proto = _stem()
    model, changed, ctx = _run(proto)
    assert changed and ctx.stats == {"staged": 1}
    assert ops(model) == {"LeakyRelu": 1, "Conv": 1, "Relu": 1}
    (decision,) = ctx.decisions
    assert decision["staged"] and decision["cycles_staged"] < decision["cycles_before"], decision
    assert_same_function(proto, model.to_proto(), rtol=0.0, atol=0.0)


def test_int8_copy_is_exact_and_cheaper(tmp_path: Path) -> None:
    """LiteRT's int8 outputs are bit-identical with the copy; Vela's cycles fall (825k -> 228k measured)."""
    proto = IRModel.load(_stem()).to_proto()
    model, changed, _ = _run(proto)
    assert changed
    calib = load_calibration(None, input_shapes(proto), count=4)
    plain = emit(proto, dtype="int8", calib=calib).tflite
    staged = emit(model.to_proto(), dtype="int8", calib=calib).tflite
    for a, b in zip(run_tflite(plain, calib.samples), run_tflite(staged, calib.samples), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    cycles = []
    for label, tfl in (("plain", plain), ("staged", staged)):
        path = tmp_path / f"{label}.tflite"
        path.write_bytes(tfl.data)
        result = compile_with_vela(path, U65, tmp_path / label)
        assert result.cpu_ops == 0
        cycles.append(result.cycles_total)
    assert cycles[1] < cycles[0] / 2, cycles


def test_wide_inputs_and_no_target_are_left_alone() -> None:
    """16 channels is a feature map, not an image; without a target there is no estimate to decide by."""
    model, changed, _ = _run(_stem(channels=16, size=32))
    assert not changed and ops(model) == {"Conv": 1, "Relu": 1}
    model, changed, _ = _run(_stem(), target=None)
    assert not changed and ops(model) == {"Conv": 1, "Relu": 1}


def test_second_run_changes_nothing() -> None:
    model, changed, _ = _run(_stem())
    assert changed
    again, changed_again, ctx = _run(model.to_proto())
    assert not changed_again and not ctx.decisions and ops(again) == ops(model)
