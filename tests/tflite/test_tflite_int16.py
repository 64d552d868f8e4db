"""int16 activations (16x8): emission checked against ONNX Runtime in LiteRT, boundaries, refusals, Vela."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from int16_models import outlier_model
from onnx import helper as h
from test_tflite_int8 import _vela_ops, small_cnn
from tflite_helpers import calibrate, make_model, op_names, run_litert, run_ort, snr_db

from nirc.errors import BackendError
from nirc.tflite import emit_tflite
from nirc.tflite.fusion import plan_fusion
from nirc.tflite.graph import GraphInfo
from nirc.tflite.ops import LOWERINGS
from nirc.tflite.wide import producers, wide_blockers


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(n)]


def _snr(model: onnx.ModelProto, tfl_data: object, feeds: list[dict[str, np.ndarray]]) -> float:
    want = np.concatenate([run_ort(model, f)[0] for f in feeds])
    got = np.concatenate([run_litert(tfl_data, f)[0] for f in feeds])  # type: ignore[arg-type]
    return snr_db(want, got)


def _dtypes(data: bytes) -> dict[str, type]:
    interp = Interpreter(model_content=data)
    return {d["name"]: d["dtype"] for d in interp.get_tensor_details()}


def _promotable(model: onnx.ModelProto) -> set[str]:
    info = GraphInfo.build(model)
    fusion = plan_fusion(info, LOWERINGS)
    names = set(producers(info, fusion))
    return names - set(wide_blockers(info, fusion, names))


def test_int16_outlier_gains_and_boundaries() -> None:
    model = outlier_model()
    ranges = calibrate(model, _feeds(16, 0))
    tests = _feeds(4, 1)
    int8 = emit_tflite(model, dtype="int8", ranges=ranges)
    mixed = emit_tflite(model, dtype="int8", ranges=ranges, wide={"t", "y"})
    snr8, snr16 = _snr(model, int8, tests), _snr(model, mixed, tests)
    print(f"int8 {snr8:.1f} dB, t and y int16 {snr16:.1f} dB")
    assert snr8 < 30.0  # the outlier really costs int8
    assert snr16 > snr8 + 15.0
    # int8 model input widened once, int16 result narrowed once for the int8 model output.
    assert op_names(mixed.data) == ["QUANTIZE", "CONV_2D", "CONV_2D", "QUANTIZE"]
    types = _dtypes(mixed.data)
    assert types["x"] == np.int8 and types["t"] == np.int16 and types["y"] == np.int16
    assert types["t/weights"] == np.int8 and types["t/bias"] == np.int64  # 16x8 with an int64 bias
    assert all(io.dtype == "int8" for io in (*mixed.inputs, *mixed.outputs))
    # Only t: the second conv reads t back in int8, so it gains nothing.
    only_t = emit_tflite(model, dtype="int8", ranges=ranges, wide={"t"})
    assert op_names(only_t.data) == ["QUANTIZE", "CONV_2D", "QUANTIZE", "CONV_2D"]
    assert abs(_snr(model, only_t, tests) - snr8) < 1.0


def test_int16_whole_cnn_matches_ort(tmp_path: Path) -> None:
    """Every op kind the small CNN has (depthwise, grouped, residual, concat, pools, FC) in int16."""
    model = small_cnn()
    rng = np.random.default_rng(0)
    ranges = calibrate(model, [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(16)])
    wide = _promotable(model)
    assert {"r1", "rd", "rs", "cat", "mp", "logits"} <= wide
    int8 = emit_tflite(model, dtype="int8", ranges=ranges)
    mixed = emit_tflite(model, dtype="int8", ranges=ranges, wide=wide)
    types = _dtypes(mixed.data)
    assert types["rs"] == np.int16 and types["logits"] == np.int16
    assert types["logits/requant"] == np.int8 and all(io.dtype == "int8" for io in mixed.outputs)
    feeds = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    for index in range(2):
        want = np.concatenate([run_ort(model, f)[index] for f in feeds])
        got8 = np.concatenate([run_litert(int8, f)[index] for f in feeds])
        got16 = np.concatenate([run_litert(mixed, f)[index] for f in feeds])
        print(f"output {index}: int8 {snr_db(want, got8):.1f} dB, int16 {snr_db(want, got16):.1f} dB")
        assert snr_db(want, got16) > 30.0
        assert snr_db(want, got16) > snr_db(want, got8) - 1.0  # both end in the same int8 output rounding
    assert _vela_ops(mixed.data, tmp_path) == ["ethos-u"]  # every int16 op and QUANTIZE on the NPU


def test_int16_deterministic() -> None:
    model = outlier_model()
    ranges = calibrate(model, _feeds(4, 0))
    a = emit_tflite(model, dtype="int8", ranges=ranges, wide={"t", "y"}).data
    b = emit_tflite(model, dtype="int8", ranges=ranges, wide=["y", "t"]).data
    assert a == b


def test_int16_refuses_ops_without_int16_kernels() -> None:
    nodes = [
        h.make_node("Softmax", ["x"], ["s"], axis=1),
        h.make_node("Exp", ["s"], ["y"]),
    ]
    model = make_model(nodes, {"x": (1, 4, 4, 4)}, ["y"])
    ranges = calibrate(model, [{"x": np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)}])
    with pytest.raises(BackendError, match=r"cannot emit as int16: 's' \(Softmax.*'y' \(Exp"):
        emit_tflite(model, dtype="int8", ranges=ranges, wide={"s", "y"})
    with pytest.raises(BackendError, match="'nope'"):
        emit_tflite(model, dtype="int8", ranges=ranges, wide={"nope"})


def _activation_model() -> onnx.ModelProto:
    """Sigmoid, SiLU, Tanh, HardSwish, standalone Relu and Clip(0, 1) between convs: their int16 forms."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 8, 1, 1)) * 0.6).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"]),
        h.make_node("Sigmoid", ["c"], ["s"]),
        h.make_node("Mul", ["c", "s"], ["silu"]),
        h.make_node("Tanh", ["silu"], ["t"]),
        h.make_node("Conv", ["t", "w"], ["c2"]),
        h.make_node("HardSwish", ["c2"], ["hs"]),
        h.make_node("Relu", ["hs"], ["r"]),  # standalone: nothing to fuse into
        h.make_node("Conv", ["r", "w"], ["c3"]),
        h.make_node("Clip", ["c3", "zero", "one"], ["y"]),  # RELU_0_TO_1 in int8
    ]
    consts = {"w": w, "zero": np.asarray(0.0, np.float32), "one": np.asarray(1.0, np.float32)}
    return make_model(nodes, {"x": (1, 8, 8, 8)}, ["y"], consts)


def test_int16_activation_functions(tmp_path: Path) -> None:
    model = _activation_model()
    rng = np.random.default_rng(1)
    feeds = [{"x": (rng.standard_normal((1, 8, 8, 8)) * 2).astype(np.float32)} for _ in range(6)]
    ranges = calibrate(model, feeds)
    wide = {"c", "s", "silu", "t", "c2", "hs", "r", "c3", "y"}
    int8 = emit_tflite(model, dtype="int8", ranges=ranges)
    mixed = emit_tflite(model, dtype="int8", ranges=ranges, wide=wide)
    ops = op_names(mixed.data)
    assert not {"HARD_SWISH", "RELU", "RELU_0_TO_1"} & set(ops) and {"LOGISTIC", "TANH"} <= set(ops)
    types = _dtypes(mixed.data)
    assert all(types[n] == np.int16 for n in wide)
    snr8, snr16 = _snr(model, int8, feeds), _snr(model, mixed, feeds)
    print(f"int8 {snr8:.1f} dB, int16 {snr16:.1f} dB")
    assert snr16 > snr8 + 1.0
    assert _vela_ops(mixed.data, tmp_path) == ["ethos-u"]  # int16 LOGISTIC/TANH and the HardSwish ops on the NPU


def test_int16_runs_on_the_npu(tmp_path: Path) -> None:
    model = outlier_model()
    mixed = emit_tflite(model, dtype="int8", ranges=calibrate(model, _feeds(4, 0)), wide={"t", "y"})
    assert _vela_ops(mixed.data, tmp_path) == ["ethos-u"]
