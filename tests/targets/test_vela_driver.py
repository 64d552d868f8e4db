"""Vela driver against real Vela runs on tiny int8 TFLite models written here.

TensorFlow is not installed and nirc's own TFLite emitter is developed in
parallel, so the models are written directly with the ``tflite`` package's
generated builder functions: that keeps these tests independent of both.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest
import tflite
from nirc.targets.ethos_u import vela_driver
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import VelaResult, compile_with_vela
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

from nirc.errors import BackendError
from nirc.target import Target

TARGETS = {t.name: t for t in ETHOS_U_TARGETS}
U65 = TARGETS["ethos-u65-256"]
U55 = TARGETS["ethos-u55-128"]

H = W = 16
CIN, COUT, K = 8, 16, 3
CONV_MACS = H * W * COUT * K * K * CIN  # SAME padding, stride 1: every output pixel does K*K*CIN MACs

# --------------------------------------------------------------------------- tiny TFLite writer


@dataclasses.dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    data: np.ndarray | None = None
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()


_Op = tuple[int, list[int], list[int], int, Callable[[flatbuffers.Builder], int] | None]


def _write_tflite(path: Path, tensors: list[_Tensor], ops: list[_Op], inputs: list[int], outputs: list[int]) -> Path:
    """Serialise one subgraph; buffer 0 is the empty sentinel TFLite expects."""
    b = flatbuffers.Builder(1024)

    def vec(start: Callable[[flatbuffers.Builder, int], None], offsets: list[int]) -> int:
        start(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return int(b.EndVector())

    tflite.BufferStart(b)
    buffers = [tflite.BufferEnd(b)]
    buffer_of: list[int] = []
    for t in tensors:
        if t.data is None:
            buffer_of.append(0)
            continue
        data = b.CreateNumpyVector(np.frombuffer(np.ascontiguousarray(t.data).tobytes(), np.uint8))
        tflite.BufferStart(b)
        tflite.BufferAddData(b, data)
        buffer_of.append(len(buffers))
        buffers.append(tflite.BufferEnd(b))
    tensor_offsets = []
    for t, buf in zip(tensors, buffer_of, strict=True):
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.array(t.shape, np.int32))
        quant = None
        if t.scale:
            scale = b.CreateNumpyVector(np.array(t.scale, np.float32))
            zero_point = b.CreateNumpyVector(np.array(t.zero_point, np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale)
            tflite.QuantizationParametersAddZeroPoint(b, zero_point)
            quant = tflite.QuantizationParametersEnd(b)  # quantized_dimension 0 = per output channel
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, t.dtype)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensor_offsets.append(tflite.TensorEnd(b))
    codes = sorted({op[0] for op in ops})
    code_offsets = []
    for code in codes:
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tflite.OperatorCodeEnd(b))
    op_offsets = []
    for code, ins, outs, options_type, options in ops:
        opts = options(b) if options else None
        in_vec = b.CreateNumpyVector(np.array(ins, np.int32))
        out_vec = b.CreateNumpyVector(np.array(outs, np.int32))
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(code))
        tflite.OperatorAddInputs(b, in_vec)
        tflite.OperatorAddOutputs(b, out_vec)
        if opts is not None:
            tflite.OperatorAddBuiltinOptionsType(b, options_type)
            tflite.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(tflite.OperatorEnd(b))
    tensor_vec = vec(tflite.SubGraphStartTensorsVector, tensor_offsets)
    op_vec = vec(tflite.SubGraphStartOperatorsVector, op_offsets)
    in_vec = b.CreateNumpyVector(np.array(inputs, np.int32))
    out_vec = b.CreateNumpyVector(np.array(outputs, np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddOperators(b, op_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    subgraphs = vec(tflite.ModelStartSubgraphsVector, [tflite.SubGraphEnd(b)])
    code_vec = vec(tflite.ModelStartOperatorCodesVector, code_offsets)
    buffer_vec = vec(tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, code_vec)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffer_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


def _conv_options(b: flatbuffers.Builder) -> int:
    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME)
    tflite.Conv2DOptionsAddStrideW(b, 1)
    tflite.Conv2DOptionsAddStrideH(b, 1)
    tflite.Conv2DOptionsAddDilationWFactor(b, 1)
    tflite.Conv2DOptionsAddDilationHFactor(b, 1)
    return int(tflite.Conv2DOptionsEnd(b))


def _add_options(b: flatbuffers.Builder) -> int:
    tflite.AddOptionsStart(b)
    return int(tflite.AddOptionsEnd(b))


def _conv_tensors() -> list[_Tensor]:
    """ifm, per-channel int8 weights, int32 bias, ofm of the 1x16x16x8 -> 16 conv."""
    rng = np.random.default_rng(0)
    w_scale = tuple(float(s) for s in rng.uniform(0.001, 0.01, COUT))
    in_scale = 0.02
    return [
        _Tensor("ifm", (1, H, W, CIN), TensorType.INT8, None, (in_scale,), (-3,)),
        _Tensor(
            "weights", (COUT, K, K, CIN), TensorType.INT8,
            rng.integers(-127, 128, (COUT, K, K, CIN), dtype=np.int8), w_scale, (0,) * COUT,
        ),
        _Tensor(
            "bias", (COUT,), TensorType.INT32,
            rng.integers(-1000, 1000, COUT, dtype=np.int32), tuple(in_scale * s for s in w_scale), (0,) * COUT,
        ),
        _Tensor("conv_out", (1, H, W, COUT), TensorType.INT8, None, (0.05,), (2,)),
    ]  # fmt: skip


def _conv_op() -> _Op:
    return (BuiltinOperator.CONV_2D, [0, 1, 2], [3], BuiltinOptions.Conv2DOptions, _conv_options)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tflite")
    conv = _write_tflite(d / "conv.tflite", _conv_tensors(), [_conv_op()], [0], [3])
    # conv -> DEQUANTIZE -> float ADD: Vela has no DEQUANTIZE and no float feature maps.
    cpu_tensors = [
        *_conv_tensors(),
        _Tensor("dequantized", (1, H, W, COUT), TensorType.FLOAT32),
        _Tensor("float_sum", (1, H, W, COUT), TensorType.FLOAT32),
    ]
    cpu_ops: list[_Op] = [
        _conv_op(),
        (BuiltinOperator.DEQUANTIZE, [3], [4], 0, None),
        (BuiltinOperator.ADD, [4, 4], [5], BuiltinOptions.AddOptions, _add_options),
    ]
    cpu = _write_tflite(d / "with_cpu.tflite", cpu_tensors, cpu_ops, [0], [5])
    return {"conv": conv, "cpu": cpu}


@pytest.fixture(scope="module")
def conv_u65(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> VelaResult:
    return compile_with_vela(models["conv"], U65, tmp_path_factory.mktemp("vela_u65"))


def _without_paths(result: VelaResult) -> dict[str, Any]:
    data = result.to_json()
    for key in ("vela_tflite", "summary_csv", "log"):
        data.pop(key)
    return data


# --------------------------------------------------------------------------- tests


def test_conv_cycles_are_positive_and_match_the_clock(conv_u65: VelaResult) -> None:
    r = conv_u65
    assert r.cycles_total > 0 and r.cycles_npu > 0
    assert r.cycles_npu <= r.cycles_total
    assert r.core_clock_hz == pytest.approx(1e9)  # Ethos_U65_High_End
    assert r.inference_time_ms == pytest.approx(r.cycles_total / 1e9 * 1e3, rel=1e-6)
    assert r.layers and sum(layer.op_cycles for layer in r.layers) == r.cycles_total


def test_conv_macs_match_the_conv_and_run_fully_on_the_npu(conv_u65: VelaResult) -> None:
    r = conv_u65
    assert r.nn_macs == CONV_MACS
    assert [layer.mac_count for layer in r.layers] == [CONV_MACS]
    assert (r.npu_ops, r.cpu_ops, r.cpu_op_list) == (1, 0, ())
    assert all(layer.target == "NPU" for layer in r.layers)
    assert 0 < r.layers[0].util_pct <= 100
    assert r.original_weight_bytes == COUT * K * K * CIN
    assert r.dram_feature_map_read_bytes >= H * W * CIN  # the ifm lives in DRAM in Dedicated_Sram
    assert r.vela_tflite.is_file() and r.vela_tflite.name == "conv_vela.tflite"


def test_report_json_round_trips(conv_u65: VelaResult) -> None:
    data = json.loads(json.dumps(conv_u65.to_json()))
    assert data["nn_macs"] == CONV_MACS
    assert data["vela_version"] == vela_driver.vela_version() != "unknown"
    assert data["layers"][0]["name"] == "conv_out"
    assert Path(data["log"]).read_text()  # Vela's captured output is kept next to its outputs


def test_cpu_fallback_ops_are_listed_with_vela_reasons(models: dict[str, Path], tmp_path: Path) -> None:
    r = compile_with_vela(models["cpu"], U65, tmp_path)
    assert (r.npu_ops, r.cpu_ops) == (1, 2)
    by_type = {op.op_type: op for op in r.cpu_op_list}
    assert set(by_type) == {"DEQUANTIZE", "ADD"}
    assert by_type["DEQUANTIZE"].name == "dequantized"
    assert by_type["ADD"].name == "float_sum"
    assert "Float32" in by_type["ADD"].reason  # Vela's constraint, not our placeholder
    assert all(op.reason and "no reason" not in op.reason for op in r.cpu_op_list)
    assert {layer.name for layer in r.layers if layer.target == "CPU"} == {"dequantized", "float_sum"}
    assert r.nn_macs == CONV_MACS


def test_vela_prints_nothing_to_the_terminal(
    models: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    compile_with_vela(models["cpu"], U65, tmp_path)  # Regor prints its warnings from C++
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_two_in_process_calls_give_identical_results(models: dict[str, Path], tmp_path: Path) -> None:
    first = compile_with_vela(models["conv"], U65, tmp_path / "a")
    compile_with_vela(models["cpu"], U55, tmp_path / "between")  # other global state in between
    second = compile_with_vela(models["conv"], U65, tmp_path / "b")
    assert _without_paths(first) == _without_paths(second)
    assert dataclasses.replace(second, vela_tflite=first.vela_tflite) == first
    assert first.vela_tflite.read_bytes() == second.vela_tflite.read_bytes()


def test_recursion_limit_is_restored(models: dict[str, Path], tmp_path: Path) -> None:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(4321)
    try:
        compile_with_vela(models["conv"], U65, tmp_path)  # Vela sets it to 1000
        assert sys.getrecursionlimit() == 4321
    finally:
        sys.setrecursionlimit(before)


def test_targets_give_different_results(models: dict[str, Path], conv_u65: VelaResult, tmp_path: Path) -> None:
    u55 = compile_with_vela(models["conv"], U55, tmp_path)
    assert (u55.accelerator_config, u55.system_config) == ("ethos-u55-128", "Ethos_U55_High_End_Embedded")
    assert u55.nn_macs == conv_u65.nn_macs  # same network ...
    assert u55.cycles_total != conv_u65.cycles_total  # ... different hardware
    assert u55.core_clock_hz == pytest.approx(0.5e9)
    assert u55.inference_time_ms == pytest.approx(u55.cycles_total / u55.core_clock_hz * 1e3, rel=1e-6)
    assert u55.inference_time_ms != pytest.approx(conv_u65.inference_time_ms)


def test_isolated_run_matches_in_process(models: dict[str, Path], tmp_path: Path) -> None:
    in_process = compile_with_vela(models["cpu"], U65, tmp_path / "in")
    isolated = compile_with_vela(models["cpu"], U65, tmp_path / "iso", isolate=True)
    assert _without_paths(isolated) == _without_paths(in_process)


@pytest.mark.parametrize("isolate", [False, True])
def test_garbage_file_is_a_backend_error_naming_the_file(tmp_path: Path, isolate: bool) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(BackendError, match=r"garbage\.tflite"):
        compile_with_vela(garbage, U65, tmp_path / "out", isolate=isolate)


def test_truncated_file_is_caught_before_vela(models: dict[str, Path], tmp_path: Path) -> None:
    # Regor segfaults on a flatbuffer that fails its verifier: this must never reach it in-process.
    data = models["conv"].read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match=r"truncated\.tflite: malformed TFLite"):
        compile_with_vela(truncated, U65, tmp_path / "out")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"nowhere\.tflite: no such TFLite file"):
        compile_with_vela(tmp_path / "nowhere.tflite", U65, tmp_path)


def test_vela_error_is_one_line_with_vela_message(models: dict[str, Path], tmp_path: Path) -> None:
    bad: Target = dataclasses.replace(U65, system_config="No_Such_System")
    with pytest.raises(BackendError) as info:
        compile_with_vela(models["conv"], bad, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "conv.tflite" in message and "No_Such_System" in message


def test_vela_cli_error_is_reported_not_exited(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"conv\.tflite: vela: error: .*--cpu-tensor-alignment"):
        compile_with_vela(models["conv"], U65, tmp_path, extra_args=["--cpu-tensor-alignment", "7"])


def test_isolated_crash_becomes_a_backend_error(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for Regor segfaulting on a corrupt model (seen with bit-flipped files).
    crash = "import os, signal; print('about to crash', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(vela_driver, "_CHILD_SOURCE", crash)
    with pytest.raises(BackendError, match=r"conv\.tflite: Vela crashed \(SIGSEGV\) after: about to crash"):
        compile_with_vela(models["conv"], U65, tmp_path, isolate=True)


def test_legacy_core_output_is_parsed_too(models: dict[str, Path], tmp_path: Path) -> None:
    # Vela < 4.x (or --debug-force-legacy-core) prints other table headers and warning formats.
    r = compile_with_vela(models["cpu"], U65, tmp_path, extra_args=["--debug-force-legacy-core"])
    assert r.nn_macs == CONV_MACS and r.npu_ops == 1
    assert {op.op_type for op in r.cpu_op_list} == {"DEQUANTIZE", "ADD"}
    assert all("quantization" in op.reason for op in r.cpu_op_list)
