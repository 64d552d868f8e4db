"""The reference side of NPU validation: TFLite Micro whole or op by op, LiteRT as a second opinion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mutation_helpers import compile_example, feeds
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.sim import reference as reference_module
from nirc.targets.ethos_u.sim.reference import MicroModel, PerOpMicro, Reference, runs_ahead
from nirc.targets.ethos_u.sim.runner import one_op_models
from nirc.targets.ethos_u.sim.validate import validate_artifact

from nirc.cli import main


@pytest.fixture(scope="module")
def lut(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return compile_example("lut_cnn", tmp_path_factory.mktemp("lut") / "out")


def test_op_by_op_equals_the_whole_model_in_tflite_micro(lut: tuple[Path, Path]) -> None:
    """The fallback for models TFLite Micro cannot run whole gives every tensor the whole run gives."""
    vela, int8 = lut
    data = int8.read_bytes()
    whole, per_op = MicroModel(data, keep=True), PerOpMicro(data)
    assert per_op.litert_ops == []
    for feed in feeds(vela, 3):
        a, b = whole.run(feed), per_op.run(feed)
        assert a.tensors.keys() <= b.tensors.keys() and len(a.tensors) >= 8
        for index, value in a.tensors.items():
            assert np.array_equal(value, b.tensors[index]), index
        assert all(np.array_equal(a.outputs[n], b.outputs[n]) for n in a.outputs)


def test_one_op_models_keep_only_their_own_tensors(lut: tuple[Path, Path]) -> None:
    _, int8 = lut
    model = container.load(int8)
    for op in model.ops:
        one = container.load(one_op_models(model, [op])[op.index])
        assert len(one.tensors) == len({i for i in (*op.inputs, *op.outputs) if i >= 0})
        assert [o.opcode for o in one.ops] == [op.opcode]


def test_litert_second_opinion_reports_its_fully_connected_differences_as_known(
    lut: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """LiteRT's reference FULLY_CONNECTED differs from TFLite Micro by 1 LSB on some inputs; the NPU matches
    TFLite Micro, so against LiteRT the difference is reported by op and rule, and validation passes."""
    vela, int8 = lut
    result = validate_artifact(vela, int8, feeds(vela, 16), reference_runtime="litert")
    assert result.details["reference"].startswith("LiteRT reference kernels")
    assert not result.bit_exact and not result.unexplained and result.max_abs_diff_lsb == 1
    assert {k["op"].split(" #")[0] for k in result.explained} == {"FULLY_CONNECTED"}
    assert all("the NPU result equals TFLite Micro's" in k["rule"] for k in result.explained)
    assert validate_artifact(vela, int8, feeds(vela, 16)).bit_exact  # against TFLite Micro: 0 LSB
    assert main(["validate", str(vela), str(int8), "--reference", "litert", "--samples", "16"]) == 0
    assert "known difference: FULLY_CONNECTED" in capsys.readouterr().out


def test_cpu_ops_are_listed_as_reference_only(tmp_path: Path) -> None:
    """QUANTIZE/DEQUANTIZE around the NPU run in the same LiteRT kernels as the reference: not independent."""
    from mutation_helpers import EXAMPLES

    from nirc.pipeline import optimize

    result = optimize(EXAMPLES / "tiny_cnn.onnx", "ethos-u65-256", outdir=tmp_path / "o", io_dtype="float32")
    npu = result.report["validation"]["npu"]
    assert npu["bit_exact"] and npu["samples"] == 8
    cpu = npu["details"]["cpu_op_list"]
    assert [c["opcode"] for c in cpu] == ["QUANTIZE", "DEQUANTIZE"]
    assert {c["checked"] for c in cpu} == {"reference only"}


def test_tflite_multiplier_is_tflites_quantize_multiplier() -> None:
    """Double-precision (scale, shift) as TFLite derives it; Vela's float32 derivation can differ in the last bits."""
    from nirc.targets.ethos_u.sim.known import tflite_multiplier

    # EfficientNet-B0's MUL #193: 0.00390625 * 0.21002896130084991 / 0.16250185668468475 (Vela: 1387780352 >> 38).
    assert tflite_multiplier(0.00390625 * 0.21002896130084991 / 0.16250185668468475) == (1387780328, 38)
    assert tflite_multiplier(0.5) == (1 << 30, 31) and tflite_multiplier(0.0) == (0, 0)
    assert tflite_multiplier(1.0 - 2.0**-40) == (1 << 30, 30)  # rounds up to 2**31: halved, one shift less


def _same(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.fixture
def always_ahead(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Every reference run counts as slow, on a machine with a second core: the worker always starts."""
    monkeypatch.setattr(reference_module, "AHEAD_SECONDS", 0.0)
    monkeypatch.setattr(reference_module.os, "cpu_count", lambda: 2)
    return monkeypatch


def test_runs_ahead_in_a_worker_process_gives_the_in_process_results(
    lut: tuple[Path, Path], always_ahead: pytest.MonkeyPatch
) -> None:
    """Every reference run slow enough for the worker: its results are the in-process ones, in order."""
    vela, int8 = lut
    monkeypatch = always_ahead
    started: list[object] = []
    real = reference_module._AheadWorker
    monkeypatch.setattr(reference_module, "_AheadWorker", lambda *a: started.append(a) or real(*a))
    reference, inputs = Reference(int8), feeds(vela, 4)
    ahead = list(runs_ahead(reference, inputs))
    assert len(started) == 1 and len(ahead) == 4
    for feed, run in zip(inputs, ahead, strict=True):
        here = reference.run(feed)
        assert _same(here.tensors, run.tensors) and len(run.tensors) >= 8
        assert here.outputs.keys() == run.outputs.keys()
        assert all(np.array_equal(here.outputs[n], run.outputs[n]) for n in here.outputs)


def test_a_worker_that_dies_is_replaced_by_running_in_process(
    lut: tuple[Path, Path], always_ahead: pytest.MonkeyPatch
) -> None:
    vela, int8 = lut
    always_ahead.setattr(reference_module, "_AHEAD_SOURCE", "raise SystemExit(3)")
    reference, inputs = Reference(int8), feeds(vela, 3)
    ahead = list(runs_ahead(reference, inputs))
    assert len(ahead) == 3
    for feed, run in zip(inputs, ahead, strict=True):
        assert _same(reference.run(feed).tensors, run.tensors)
