"""End to end: ONNX → passes → int8 TFLite → Vela, with the real emitter, LiteRT and Vela."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
from nirc_testing import parse

from nirc.backend import CalibrationOptions
from nirc.cli import main
from nirc.errors import CalibrationError, UnsupportedOperatorError
from nirc.pipeline import optimize

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_cnn.onnx"


def _builtin_ops(path: Path) -> list[str]:
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        code = codes[graph.Operators(i).OpcodeIndex()]
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        ops.append(code.CustomCode().decode() if builtin == tflite.BuiltinOperator.CUSTOM else names[builtin])
    return ops


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("run") / "out"
    calib = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    calib_path = out.parent / "calib.npy"
    np.save(calib_path, calib)
    result = optimize(EXAMPLE, "ethos-u65", outdir=out, calibration=CalibrationOptions(path=calib_path))
    return out, result.report


def test_artifacts_and_report(example_run: tuple[Path, dict[str, object]]) -> None:
    out, report = example_run
    # --npu-format auto compiles both forms and keeps the faster (a tie keeps TFLite); a kept TOSA form ships
    # its graph beside the artifact.
    fmt = report["npu_format"]
    assert isinstance(fmt, dict) and set(fmt["estimates_ms"]) == {"tflite", "tosa"}
    tosa_won = fmt["estimates_ms"]["tosa"] < fmt["estimates_ms"]["tflite"]
    assert fmt["format"] == ("tosa" if tosa_won else "tflite")
    tosa_files = ["tiny_cnn_npu.json", "tiny_cnn_npu.tosa"] if tosa_won else []
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted([
        "report.html", "report.json", "tiny_cnn_int8.tflite", *tosa_files, "tiny_cnn_opt.onnx", "tiny_cnn_vela.tflite",
    ])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ("target", "passes", "model", "vela", "validation", "fits", "calibration", "placement"):
        assert key in on_disk
    assert on_disk["calibration"]["synthetic"] is False and on_disk["calibration"]["samples"] == 8
    assert on_disk["placement"]["agree"] is True and on_disk["placement"]["observed"]["cpu_ops"] == 0
    memory = on_disk["memory"]
    assert memory["peak_bytes"] == max(t["live_bytes"] for t in on_disk["memory_timeline"]) > 0
    assert memory["over_arena_steps"] == 0  # tiny_cnn fits the 384 KiB arena


def test_report_profiles_stages_vela_and_memory(example_run: tuple[Path, dict[str, object]]) -> None:
    _, report = example_run
    profile = report["profile"]
    assert isinstance(profile, dict)
    names = [s["name"] for s in profile["stages"]]
    assert names[:4] == ["load", "passes", "emit", "validate"] and "vela" in names and names[-1] == "report"
    vela = next(s for s in profile["stages"] if s["name"] == "vela")
    # the final compilation, counted where it ran: one per form --npu-format auto compiled and compared
    forms = max(1, len(report["npu_format"].get("estimates_ms") or {}))  # type: ignore[index,attr-defined]
    assert vela["events"]["vela"]["count"] == forms
    assert profile["events"]["vela"]["count"] >= 1
    assert profile["weight_bytes"] > 0 and profile["peak_rss_bytes"] > profile["weight_bytes"]
    assert all(p["name"] for p in profile["passes"])


def test_int8_model_is_transpose_free_and_all_npu(example_run: tuple[Path, dict[str, object]]) -> None:
    out, report = example_run
    int8_ops = _builtin_ops(out / "tiny_cnn_int8.tflite")
    assert "TRANSPOSE" not in int8_ops and "CONV_2D" in int8_ops
    vela = report["vela"]
    assert isinstance(vela, dict)
    assert vela["cpu_ops"] == 0 and vela["npu_ops"] > 0
    assert set(_builtin_ops(out / "tiny_cnn_vela.tflite")) == {"ethos-u"}
    assert vela["nn_macs"] > 0 and vela["inference_time_ms"] > 0


def test_int8_accuracy_is_measured(example_run: tuple[Path, dict[str, object]]) -> None:
    _, report = example_run
    (output,) = report["validation"]["outputs"]  # type: ignore[index]
    assert output["snr_db"] > 25.0
    assert output["top1_agreement"] is not None and output["top1_agreement"] >= 0.75


def test_fits_the_reference_platform(example_run: tuple[Path, dict[str, object]]) -> None:
    _, report = example_run
    fits = report["fits"]
    assert fits["sram"]["fits"] is True  # type: ignore[index]
    assert fits["platform"]["fits"] is True and fits["platform"]["basis"] == "vela"  # type: ignore[index]


def test_outputs_are_byte_identical(tmp_path: Path) -> None:
    results = [optimize(EXAMPLE, "ethos-u65", outdir=tmp_path / name) for name in ("a", "b")]
    first = results[0]
    assert first.int8_tflite == (tmp_path / "a" / "tiny_cnn_int8.tflite").read_bytes() == results[1].int8_tflite
    assert first.vela_tflite == (tmp_path / "a" / "tiny_cnn_vela.tflite").read_bytes()
    assert first.artifacts["report.json"] == tmp_path / "a" / "report.json"
    for artifact in ("tiny_cnn_int8.tflite", "tiny_cnn_vela.tflite", "tiny_cnn_opt.onnx"):
        assert (tmp_path / "a" / artifact).read_bytes() == (tmp_path / "b" / artifact).read_bytes(), artifact


def test_synthetic_calibration_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", str(EXAMPLE), "-o", str(tmp_path / "o"), "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "warning: no --calib data" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["vela"] is None and report["calibration"]["synthetic"] is True
    assert any("synthetic" in w for w in report["warnings"])


def test_wrong_calibration_shape_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "calib.npy"
    np.save(bad, np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"calib\.npy"):
        optimize(EXAMPLE, outdir=tmp_path / "o", calibration=CalibrationOptions(path=bad))
    assert main(["optimize", str(EXAMPLE), "-o", str(tmp_path / "o"), "--calib", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npy"]  # no staging leftovers


def test_unsupported_ops_listed_before_any_work(tmp_path: Path) -> None:
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,4,8,8] x) => (float[1,4] y) {
        a = Erf (x)
        b = Erf (a)
        c = Det (b)
        y = Relu (c)
    }
    """
    path = tmp_path / "odd.onnx"
    onnx.save(parse(text), str(path))
    with pytest.raises(UnsupportedOperatorError, match=r"odd\.onnx: ops with no TFLite form: Erf x2, Det x1$"):
        optimize(path, outdir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_convert_float32_and_int8(tmp_path: Path) -> None:
    assert main(["convert", str(EXAMPLE), "-o", str(tmp_path / "f.tflite"), "--dtype", "float32"]) == 0
    assert main(["convert", str(EXAMPLE), "-o", str(tmp_path / "q.tflite")]) == 0
    assert "CONV_2D" in _builtin_ops(tmp_path / "f.tflite")
    assert (tmp_path / "q.tflite").stat().st_size < (tmp_path / "f.tflite").stat().st_size


def test_model_too_large_for_platform(tmp_path: Path) -> None:
    """A target whose platform memory is smaller than the compiled model: artifacts + report, then the error."""
    from dataclasses import replace

    from nirc.errors import TargetError
    from nirc.plugin import load_registry

    reference = load_registry().get_target("ethos-u65")
    small = replace(reference, name="ethos-u65-tiny-board", platform_memory_bytes=16 * 1024)
    with pytest.raises(TargetError, match=r"does not fit: \d+\.\d KiB > 16\.0 KiB"):
        optimize(EXAMPLE, small, outdir=tmp_path / "o")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["fits"]["platform"]["fits"] is False
    assert report["fits"]["platform"]["required_bytes"] > 16 * 1024
    result = optimize(EXAMPLE, small, outdir=tmp_path / "o2", require_fit=False)
    assert result.report["fits"]["platform"]["fits"] is False


def test_channel_rounding_selects_passes() -> None:
    from nirc.pipeline import select_passes
    from nirc.plugin import load_registry

    registry = load_registry()
    target = registry.get_target("ethos-u65")
    default = [p.name for p in select_passes(registry, target)]
    assert "pad-channels" in default and "prune-channels" not in default
    off = [p.name for p in select_passes(registry, target, channel_rounding="off")]
    assert "pad-channels" not in off
    prune = select_passes(
        registry, target, channel_rounding="prune", pass_options={"prune-channels": {"ratio": 0.25, "align": 8}}
    )
    names = [p.name for p in prune]
    assert names.index("prune-channels") == names.index("pad-channels") - 1
    assert prune[names.index("prune-channels")].ratio == 0.25  # type: ignore[attr-defined]
    baseline = [p.name for p in select_passes(registry, target, no_hw_passes=True)]
    assert not set(target.hw_passes) & set(baseline)


def test_lossy_prune_is_measured_against_the_original(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ROOT / "examples" / "digits_cnn.onnx"
    calib = ROOT / "examples" / "digits_calib.npz"
    argv = ["optimize", str(model), "-o", str(tmp_path / "o"), "--channel-rounding", "prune", "--calib", str(calib)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8 vs original float" in out and "warning: lossy pass prune-channels changed the model" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    record = next(p for p in report["passes"] if p["name"] == "prune-channels")
    assert record["exact"] is False and record["changed"] is True and record["decisions"]
    assert report["validation"]["outputs_vs_original"][0]["snr_db"] < report["validation"]["outputs"][0]["snr_db"]
    assert main(["optimize", str(model), "-o", str(tmp_path / "p"), "--prune-ratio", "0.3"]) == 2


def test_compiled_npu_model_is_executed(example_run: tuple[Path, dict[str, object]]) -> None:
    """Vela's output runs in the functional model and matches its reference bit for bit on 8 inputs.

    Under ``--npu-format auto`` tiny_cnn compiles in TOSA form, so the reference is the TOSA reference model;
    the TFLite form's intermediate-tensor comparison is covered by tests/targets/ethos_u/sim.
    """
    out, report = example_run
    npu = report["validation"]["npu"]  # type: ignore[index]
    assert npu["method"] == "sim" and npu["samples"] == 8 and npu["bit_exact_samples"] == 8
    assert npu["bit_exact"] and npu["max_abs_diff_lsb"] == 0 and not npu.get("unexplained")
    if npu.get("reference") != "tosa":
        assert npu["details"]["intermediates"]["compared"] > 8 and npu["details"]["intermediates"]["differing"] == 0
    vela, int8 = out / "tiny_cnn_vela.tflite", out / "tiny_cnn_int8.tflite"
    assert main(["validate", str(vela), str(int8), "--samples", "2"]) == 0


def test_validate_subcommand_detects_a_corrupted_artifact(
    example_run: tuple[Path, dict[str, object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = example_run
    good = (out / "tiny_cnn_vela.tflite").read_bytes()
    int8 = out / "tiny_cnn_int8.tflite"
    # Flip bytes in the middle of the file (weights / command stream live in the custom op's buffers).
    for offset in range(len(good) // 3, len(good) // 3 + 400, 7):
        bad = bytearray(good)
        bad[offset] ^= 0x5A
        path = tmp_path / "bad_vela.tflite"
        path.write_bytes(bytes(bad))
        if main(["validate", str(path), str(int8), "--samples", "1"]) != 0:
            break
    else:
        pytest.fail("no corruption among 58 flipped bytes was detected")
    capsys.readouterr()


def test_ops_a_pass_legalizes_pass_the_front_door(tmp_path: Path) -> None:
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,8,4,4] x) => (float[1,8,4,4] y) {
        y = LayerNormalization <axis = 1> (x, scale, bias)
    }
    """
    rng = np.random.default_rng(0)
    path = tmp_path / "ln.onnx"
    onnx.save(parse(text, scale=rng.uniform(0.5, 1.5, (8, 4, 4)).astype(np.float32),
                    bias=rng.standard_normal((8, 4, 4)).astype(np.float32)), str(path))
    result = optimize(path, outdir=tmp_path / "o", compile=False)
    assert any(p.name == "decompose-layernorm" and p.changed for p in result.records)
    with pytest.raises(UnsupportedOperatorError, match="LayerNormalization x1"):
        optimize(path, outdir=tmp_path / "o2", skip=["decompose-layernorm"])
    assert not (tmp_path / "o2").exists()


def test_stem_relayout_is_fed_consistently(tmp_path: Path) -> None:
    """--stem changes the compiled model's input: calibration, validation and --verify all use the new feed."""
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,3,96,96] x) => (float[1,16,48,48] y) {
        c = Conv <pads = [1,1,1,1], strides = [2,2]> (x, w, b)
        y = Relu (c)
    }
    """
    rng = np.random.default_rng(0)
    path = tmp_path / "stem.onnx"
    weights = {"w": (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32),
               "b": rng.standard_normal(16).astype(np.float32)}
    onnx.save(parse(text, **weights), str(path))
    stem = {"substitute-blocks": {"stem": "pad-channels"}}
    result = optimize(path, outdir=tmp_path / "o", verify=True, pass_options=stem)
    changes = result.report["input_layout_changes"]
    assert changes and changes[0]["new_shape"] == [1, 8, 96, 96]
    assert any("inputs differ" in w for w in result.warnings)
    record = next(r for r in result.records if r.name == "substitute-blocks")
    assert record.changed and record.verified
    (output,) = result.report["validation"]["outputs"]
    assert output["snr_db"] > 30
    assert result.report["validation"]["npu"]["max_abs_diff_lsb"] <= 1


def test_report_has_the_accuracy_guard_and_per_layer_error(example_run: tuple[Path, dict[str, object]]) -> None:
    """With --calib data the guard is on by default (0.5 dB) and the report shows where int8 error enters."""
    _, report = example_run
    validation = report["validation"]
    guard = validation["accuracy_guard"]  # type: ignore[index]
    assert guard["max_snr_drop_db"] == 0.5 and guard["samples"] == 8
    layers = validation["layers"]  # type: ignore[index]
    assert layers["tensors"][0]["op"] == "input" and len(layers["tensors"]) > 3
    assert all(w["drop_db"] > 0 and w["input_snr_db"] is not None for w in layers["worst"])


def test_guard_is_off_with_synthetic_data_unless_asked(tmp_path: Path) -> None:
    plain = optimize(EXAMPLE, "ethos-u65", outdir=tmp_path / "a", compile=False, layer_report=False)
    assert "accuracy_guard" not in plain.report["validation"] and "layers" not in plain.report["validation"]
    asked = optimize(EXAMPLE, "ethos-u65", outdir=tmp_path / "b", compile=False, accuracy=True, max_snr_drop=1.0)
    assert asked.report["validation"]["accuracy_guard"]["max_snr_drop_db"] == 1.0
