"""SOFTMAX in the TOSA lift: the expectation form when a 1x1 conv reads it (a detector's DFL box decoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import compile_with_vela
from nirc_testing import parse

from nirc.backend import emit, input_shapes, validate
from nirc.ir import IRModel
from nirc.quant import load_calibration
from nirc.tosa import softmax
from nirc.tosa.lift import lift
from nirc.tosa.route import check_compiled, compare_reference

U65 = next(t for t in ETHOS_U_TARGETS if t.name == "ethos-u65-256")
HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def _dfl(anchors: int = 300, out_channels: int = 2, transpose: bool = True, decode: bool = False) -> onnx.ModelProto:
    """conv -> [1, 4, 16, A] -> (transpose to [1, 16, 4, A]) -> Softmax over the 16 -> 1x1 conv with bias.

    ultralytics' DFL is this with one output channel, weights 0..15 and no bias; two
    channels and a bias exercise the per-channel scales and the bias offset.
    """
    rng = np.random.default_rng(3)
    if transpose:
        body = "r = Reshape (c, shape)\n t = Transpose <perm = [0, 2, 1, 3]> (r)\n s = Softmax <axis = 1> (t)"
        out = f"[1,{out_channels},4,{anchors}]"
        shape = [1, 4, 16, anchors]
    else:
        body = "r = Reshape (c, shape)\n s = Softmax <axis = 1> (r)"
        out = f"[1,{out_channels},4,{anchors}]"
        shape = [1, 16, 4, anchors]
    tail = "y = Conv (s, w1, b1)"
    if decode:  # ultralytics' dist2bbox after the DFL: [1, 4, A] split in two, anchors minus / plus each half
        out = f"[1,4,{anchors}]"
        tail = """d = Conv (s, w1)
        e = Reshape (d, eshape)
        lt, rb = Split <axis = 1, num_outputs = 2> (e)
        p0 = Sub (anchor, lt)
        p1 = Add (anchor, rb)
        y = Concat <axis = 1> (p0, p1)"""
    text = f"""g (float[1,64,1,{anchors}] x) => (float{out} y) {{
        c = Conv (x, w0)
        {body}
        {tail}
    }}"""
    w1 = np.concatenate([np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1),
                         rng.standard_normal((out_channels - 1, 16, 1, 1)).astype(np.float32)])  # fmt: skip
    extra = {"b1": np.asarray([0.5] + [-0.25] * (out_channels - 1), np.float32)}
    if decode:
        w1 = w1[:1]
        extra = {"eshape": np.asarray([1, 4, anchors], np.int64),
                 "anchor": rng.uniform(0, 40, (1, 2, anchors)).astype(np.float32)}  # fmt: skip
    proto = parse(
        HEADER + text,
        w0=(rng.standard_normal((64, 64, 1, 1)) * 0.6).astype(np.float32),
        shape=np.asarray(shape, np.int64),
        w1=w1,
        **extra,
    )
    return IRModel.load(proto).to_proto()


def _lift_and_compile(proto: onnx.ModelProto, tmp_path: Path, samples: int) -> tuple[Any, Any, Any, Any]:
    """Emit int8, lift to TOSA and compile with Vela; the expectation form leaves no REDUCE_SUM."""
    calib = load_calibration(None, input_shapes(proto), count=samples)
    emitted = emit(proto, dtype="int8", calib=calib)
    graph = lift(emitted.tflite.data)
    path = tmp_path / "model.tosa"
    path.write_bytes(graph.data)
    vela = compile_with_vela(path, U65, tmp_path / "vela")
    assert "ReduceSum" not in {layer.original_op for layer in vela.layers}
    return emitted, calib, graph, vela


@pytest.mark.parametrize("transpose", [True, False])
def test_softmax_read_by_a_1x1_conv_divides_per_row(tmp_path: Path, transpose: bool) -> None:
    """``W softmax(x) = (W E) / S``: one conv per exp byte, the division on the conv's outputs only.

    As exact as int8 allows (the probabilities are not rounded to 1/256 before the conv): the
    int8 TOSA result is at least as close to ONNX Runtime's float result as the int8 TFLite's,
    the compiled artifact equals the TOSA reference model bit for bit, and Vela runs it in fewer
    cycles than the per-element form (no REDUCE_SUM, MUL and RESCALE over the whole input).
    """
    proto = _dfl(transpose=transpose)
    emitted, calib, graph, vela = _lift_and_compile(proto, tmp_path, samples=4)
    (check,) = compare_reference(proto, emitted.tflite, graph, calib.samples)
    (tflite_check,) = validate(proto, emitted.tflite, calib)
    assert check.snr_db >= tflite_check.snr_db - 0.1, (check, tflite_check)
    npu = check_compiled(vela.vela_tflite, emitted.tflite, graph, calib.samples[:2], [])
    assert npu["bit_exact"], npu

    plain_path = tmp_path / "plain.tosa"
    old = softmax._EXPECTATION_MAX_ROW
    try:
        softmax._EXPECTATION_MAX_ROW = 0  # every row too long: the per-element form
        plain_path.write_bytes(lift(emitted.tflite.data).data)
    finally:
        softmax._EXPECTATION_MAX_ROW = old
    plain = compile_with_vela(plain_path, U65, tmp_path / "vela_plain")
    assert "ReduceSum" in {layer.original_op for layer in plain.layers}
    assert vela.cycles_total < plain.cycles_total, (vela.cycles_total, plain.cycles_total)


def test_softmax_expectation_feeding_a_box_decoder_runs_bit_exact(tmp_path: Path) -> None:
    """The DFL as ultralytics exports it, with dist2bbox after it (reshape, split, anchor sub/add).

    On the whole YOLOv8n-320 (torchscript export), the result written by the elementwise RESCALE
    had Vela fold the reshape into that op's OFM addressing, rows 35 MB past SRAM; it now leaves
    through an identity depthwise conv, as the TFLite conv's did (bit-exact there, 11.42 ms). This
    small model does not reproduce Vela's choice; it checks the decoder form end to end.
    """
    proto = _dfl(anchors=2100, out_channels=1, transpose=False, decode=True)
    emitted, calib, graph, vela = _lift_and_compile(proto, tmp_path, samples=2)
    npu = check_compiled(vela.vela_tflite, emitted.tflite, graph, calib.samples[:2], [])
    assert npu["bit_exact"], npu
