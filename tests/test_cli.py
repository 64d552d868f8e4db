from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import parse

from nirc.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_cnn.onnx"


def _dynamic_model(path: Path) -> Path:
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
        c = Conv <pads = [1,1,1,1]> (x, w)
        y = Relu (c)
    }
    """
    onnx.save(parse(text, w=np.ones((4, 3, 3, 3), np.float32)), str(path))
    return path


def test_analyze_json_has_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(EXAMPLE), "--target", "ethos-u65", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("macs", "params", "weight_bytes", "peak_activation_bytes", "layers"):
        assert key in data
    assert data["macs"] > 0 and len(data["layers"]) > 0
    assert {"name", "op", "macs", "params", "activation_bytes", "misaligned_channels"} <= set(data["layers"][0])


def test_analyze_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "peak live activations" in out and "MACs" in out


def test_optimize_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["optimize", str(EXAMPLE), "--target", "ethos-u65", "-o", str(out), "--verify"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["target"]["name"] == "ethos-u65-256"
    from nirc.plugin import load_registry

    pipeline = list(load_registry().get_target("ethos-u65").default_pipeline)
    assert [p["name"] for p in report["passes"]] == pipeline
    optimized = onnx.load(str(out / "tiny_cnn_opt.onnx"))
    assert "BatchNormalization" not in {n.op_type for n in optimized.graph.node}


def test_optimize_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main(["optimize", str(EXAMPLE), "-o", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "tiny_cnn_opt.onnx").read_bytes() == (tmp_path / "b" / "tiny_cnn_opt.onnx").read_bytes()

    def strip_times(path: Path) -> object:
        data = json.loads(path.read_text())
        data.pop("profile")
        for record in data["passes"]:
            record.pop("seconds")
        return data

    assert strip_times(tmp_path / "a" / "report.json") == strip_times(tmp_path / "b" / "report.json")


def test_input_shape_fixes_dynamic_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _dynamic_model(tmp_path / "dyn.onnx")
    assert main(["analyze", str(model), "--input-shape", "x=1,3,8,8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 1 * 4 * 8 * 8 * 3 * 9
    assert main(["analyze", str(model), "--input-shape", "1,3,8,8", "--json"]) == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["analyze", "{tmp}/missing.onnx"], 2, "missing.onnx: no such file"),
        (["analyze", "{tmp}/garbage.onnx"], 2, "garbage.onnx: not a valid ONNX model"),
        (["analyze", "{tmp}/dyn.onnx"], 2, "input 'x' has dynamic shape"),
        (["analyze", str(EXAMPLE), "--target", "ethos-u99"], 4, "unknown target 'ethos-u99'"),
        (["optimize", str(EXAMPLE), "--passes", "nope", "-o", "{tmp}/out"], 5, "unknown pass 'nope'"),
        (["analyze", "{tmp}/dyn.onnx", "--input-shape", "x=1,a"], 2, "--input-shape expects"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"definitely not onnx" * 3)
    _dynamic_model(tmp_path / "dyn.onnx")
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nirc: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_console_script_no_traceback_unless_debug(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    plain = subprocess.run([sys.executable, "-m", "nirc.cli", "analyze", str(bad)], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "nirc.cli", "--debug", "analyze", str(bad)], capture_output=True, text=True
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_passes_and_targets_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fuse-batchnorm" in out and "exact" in out
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "ethos-u65-256" in out and "alias: ethos-u65" in out and "ethos-u85-2048" in out


def test_analyze_reports_vela_cycles_and_mac_utilisation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(EXAMPLE), "--target", "ethos-u65", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    convs = [layer for layer in data["layers"] if layer["op"] == "Conv"]
    assert convs and all(layer["cycles"] > 0 for layer in convs)
    assert all(0 < layer["mac_util"] <= 1 for layer in convs)
    # utilisation is MACs over what the MAC array could do in those cycles
    first = convs[0]
    assert first["mac_util"] == pytest.approx(first["macs"] / (first["cycles"] * 256), abs=1e-4)
    assert data["cycles_total"] >= sum(layer["cycles"] for layer in convs)
    assert main(["analyze", str(EXAMPLE), "--json", "--no-cycles"]) == 0
    assert json.loads(capsys.readouterr().out)["cycles_total"] is None


def test_analyze_alignment_costs_misaligned_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(EXAMPLE), "--no-cycles", "--alignment", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["alignment"]
    by_name = {row["name"]: row for row in rows}
    # tiny_cnn's 24-channel conv leaves 8 channels of its last 16-channel brick empty
    assert by_name["down1.conv"]["out_channels"] == 24 and by_name["down1.conv"]["out_brick_gap"] == 8
    assert by_name["down1.conv"]["pad_cycles_delta"] is not None
    assert main(["analyze", str(EXAMPLE), "--no-cycles", "--alignment"]) == 0
    assert "channel alignment:" in capsys.readouterr().out


def test_analyze_predicts_placement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(EXAMPLE), "--no-cycles", "--placement", "--json"]) == 0
    placement = json.loads(capsys.readouterr().out)["placement"]
    assert placement["predicted"]["cpu_ops"] == 0 and placement["predicted"]["npu_ops"] > 0
    assert placement["cpu_ops"] == []


def test_pass_options_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    argv = ["optimize", str(EXAMPLE), "-o", str(out), "--no-compile", "--json",
            "--pass-option", "tile-activations.max_trials=3", "--pass-option", "pad-channels.scope=model"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["optimize", str(EXAMPLE), "-o", str(out), "--pass-option", "fuse-batchnorm.nope=1"]) == 5
    assert "pass fuse-batchnorm: bad options" in capsys.readouterr().err
    assert main(["optimize", str(EXAMPLE), "-o", str(out), "--pass-option", "oops"]) == 2


def test_optimize_accuracy_options_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--max-snr-drop turns the int8 guard on (here with synthetic data); the summary says what it did and
    where int8 error enters; --weight-range/--bias-correction reach the emitter."""
    out = tmp_path / "o"
    args = ["optimize", str(EXAMPLE), "-o", str(out), "--no-compile", "--max-snr-drop", "0.25"]
    assert main([*args, "--weight-range", "mse", "--bias-correction"]) == 0
    text = capsys.readouterr().out
    assert "accuracy guard (max int8 SNR drop 0.25 dB)" in text and "int8 error enters at" in text
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["accuracy_guard"]["max_snr_drop_db"] == 0.25
    assert main(["optimize", str(EXAMPLE), "-o", str(tmp_path / "p"), "--no-compile", "--no-accuracy-guard"]) == 0
    assert "accuracy guard" not in capsys.readouterr().out
