"""nirc.tosa.partition: the ops the lift refuses stay TFLite, the rest still goes to Vela as TOSA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import compile_with_vela
from nirc_testing import conv_silu_then

from nirc.backend import emit, input_shapes
from nirc.quant import load_calibration
from nirc.tflite import TFLiteModel
from nirc.tosa.lift import TosaUnsupportedError, lift
from nirc.tosa.partition import io_names, lift_split, split, submodel
from nirc.tosa.route import check_compiled, compare_reference, compile_tosa

U65 = next(t for t in ETHOS_U_TARGETS if t.name == "ethos-u65-256")


def _model(tail: str, out_shape: str) -> onnx.ModelProto:
    """A 1x1 conv 16 -> 32 at 24x24, SiLU, then ``tail`` (reading ``a``, writing ``y``)."""
    return conv_silu_then(tail, out_shape, size=24, seed=5)


def _emit(proto: onnx.ModelProto) -> tuple[TFLiteModel, list[dict[str, np.ndarray]]]:
    calib = load_calibration(None, input_shapes(proto), count=4)
    return emit(proto, dtype="int8", calib=calib).tflite, list(calib.samples)


#: A bilinear 2x upscale: RESIZE_BILINEAR, which the lift does not translate and Vela's TFLite reader runs.
RESIZE_TAIL = (
    'sc = Constant <value_floats = [1.0, 1.0, 2.0, 2.0]> ()\n'
    ' y = Resize <mode = "linear", coordinate_transformation_mode = "half_pixel"> (a, , sc)'
)
RESIZE = _model(RESIZE_TAIL, "[1,32,48,48]")


def test_resize_stays_tflite_and_silu_becomes_a_table(tmp_path: Path) -> None:
    """RESIZE_BILINEAR is not lifted: Vela's TFLite reader runs it after the TOSA part, both on the NPU."""
    tflite, samples = _emit(RESIZE)
    with pytest.raises(TosaUnsupportedError, match="RESIZE_BILINEAR") as refused:
        lift(tflite.data)
    assert refused.value.op_index is not None
    graph = lift_split(tflite.data)
    assert graph.split is not None and graph.split.ops == ("RESIZE_BILINEAR",)
    assert (graph.tables, graph.ops_folded_into_tables) == (1, 2)  # LOGISTIC + MUL -> one TABLE
    path = tmp_path / "m_npu.tosa"
    path.write_bytes(graph.data)
    stitched = compile_tosa(graph, path, U65, tmp_path / "vela")
    model = container.load(stitched.vela_tflite)
    assert [op.opcode for op in model.ops] == ["ethos-u", "ethos-u"]  # both parts on the NPU, one file
    assert io_names(stitched.vela_tflite.read_bytes()) == io_names(tflite.data)
    assert stitched.cpu_ops == 0 and {layer.original_op for layer in stitched.layers} >= {"Table", "ResizeBilinear"}
    # The estimate is the two parts' sum: on a model this small the boundary tensor's round trip
    # through DRAM can outweigh the TABLE, which is why --npu-format auto compares both forms.
    plain = tmp_path / "m.tflite"
    plain.write_bytes(tflite.data)
    assert compile_with_vela(plain, U65, tmp_path / "tflite").cycles_total > 0
    (check,) = compare_reference(RESIZE, tflite, graph, samples)
    assert check.snr_db > 25, check
    warnings: list[str] = []
    npu = check_compiled(stitched.vela_tflite, tflite, graph, samples[:2], warnings)
    assert npu.get("bit_exact") is True, (npu, warnings)


def test_split_part_is_closed_under_producers() -> None:
    tflite, _ = _emit(RESIZE)
    with pytest.raises(TosaUnsupportedError) as refused:
        lift(tflite.data)
    blocked = refused.value.op_index
    assert blocked is not None
    parts = split(tflite.data, blocked, lambda data: None)
    assert parts is not None and blocked in parts.rest_ops and blocked not in parts.npu_ops
    assert sorted(parts.npu_ops + parts.rest_ops) == list(range(len(parts.npu_ops) + len(parts.rest_ops)))
    # The NPU part's outputs are exactly what the rest reads.
    assert io_names(parts.npu)[1] == io_names(parts.rest)[0]
    assert io_names(submodel(tflite.data, parts.npu_ops))[0] == io_names(tflite.data)[0]
    # Nothing lifts: no split.
    assert split(tflite.data, blocked, lambda data: 0) is None


def test_no_split_when_a_part_has_more_than_one_interface_tensor() -> None:
    """The SiLU output is a model output and the resize's input: the TFLite part would have two outputs."""
    proto = _model(RESIZE_TAIL, "[1,32,48,48]")
    proto.graph.output.append(onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 32, 24, 24]))
    tflite, _ = _emit(proto)
    with pytest.raises(TosaUnsupportedError, match="RESIZE_BILINEAR"):
        lift_split(tflite.data)
