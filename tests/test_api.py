"""The embedding API (issue 21 item 11): bytes or a ModelProto in, artifacts out, no files unless asked,
one options object shared with the CLI, safe from several threads."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import parse

import nirc
from nirc.cli import build_parser, optimize_options

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_cnn.onnx"


def _strip_seconds(report_json: bytes) -> object:
    data = json.loads(report_json)
    data.pop("profile")  # timings and peak RSS, like the seconds
    for record in data["passes"]:
        record.pop("seconds")
    return data


def test_public_names() -> None:
    from nirc import CalibrationOptions, OptimizeOptions, OptimizeResult, optimize

    options = OptimizeOptions(calibration=CalibrationOptions(method="mse"), verify=True)
    assert options.target == "ethos-u65" and options.calibration.method == "mse"
    assert callable(optimize) and OptimizeResult.__name__ == "OptimizeResult"


def test_bytes_in_artifacts_out_nothing_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    result = nirc.optimize(EXAMPLE.read_bytes(), options=nirc.OptimizeOptions(validate_npu="none"))
    assert sorted(os.listdir(work)) == [] and [p for p in os.listdir(scratch) if "nirc-" in p] == []
    assert result.outdir is None and result.artifacts == {}
    assert result.model is not None and result.int8_tflite[4:8] == b"TFL3"
    assert result.vela_tflite is not None and result.vela_tflite[4:8] == b"TFL3"
    assert result.report["vela"]["npu_ops"] > 0
    files = result.files()
    assert {"model_opt.onnx", "model_int8.tflite", "model_vela.tflite", "report.json", "report.html"} <= set(files)
    assert any(name.startswith("vela/") and name.endswith(".csv") for name in files)


def test_written_files_equal_the_in_memory_ones(tmp_path: Path) -> None:
    options = nirc.OptimizeOptions(validate_npu="none")
    written = nirc.optimize(EXAMPLE, options=options, outdir=str(tmp_path / "a"))  # a str, like ``source``
    in_memory = nirc.optimize(EXAMPLE, options=options).files()
    assert written.outdir == tmp_path / "a"
    assert set(written.artifacts) == {n for n in in_memory if "/" not in n}
    for name, data in in_memory.items():
        on_disk = (tmp_path / "a" / name).read_bytes()
        if name == "report.json":
            assert _strip_seconds(on_disk) == _strip_seconds(data)
        elif name != "report.html":  # shows the seconds too
            assert on_disk == data, name


def test_caller_proto_is_not_modified() -> None:
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N,3,8,8] x) => (float[N,16,8,8] y) {
        c = Conv <pads = [1,1,1,1]> (x, w)
        y = Relu (c)
    }
    """
    proto = parse(text, w=np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32))
    snapshot = proto.SerializeToString()
    result = nirc.optimize(proto, input_shapes={"x": [1, 3, 8, 8]}, compile=False)
    assert proto.SerializeToString() == snapshot
    assert result.vela_tflite is None and result.report["vela"] is None


def test_keywords_override_options_and_typos_fail() -> None:
    with pytest.raises(TypeError, match="verfy"):
        nirc.optimize(EXAMPLE, verfy=True)


def test_concurrent_calls_match_a_sequential_one() -> None:
    options = nirc.OptimizeOptions(validate_npu="none")
    expected = nirc.optimize(EXAMPLE, options=options)
    results: list[nirc.OptimizeResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(nirc.optimize(EXAMPLE, options=options))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 3
    for result in results:
        assert result.int8_tflite == expected.int8_tflite
        assert result.vela_tflite == expected.vela_tflite
        assert _strip_seconds(result.files()["report.json"]) == _strip_seconds(expected.files()["report.json"])


def test_cli_builds_the_same_options_object() -> None:
    args = build_parser().parse_args(
        ["optimize", str(EXAMPLE), "--skip-pass", "fold-pad", "--calib-method", "mse", "--validate", "none"]
    )
    options = optimize_options(args)
    assert isinstance(options, nirc.OptimizeOptions)
    assert options.skip == ("fold-pad",) and options.calibration.method == "mse" and options.validate_npu == "none"
    assert options.require_fit is False  # the CLI prints the summary before failing on fit


def test_model_load_from_bytes_rejects_garbage() -> None:
    from nirc.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="<bytes>"):
        nirc.optimize(b"not onnx at all", compile=False)
    assert onnx.load_from_string(EXAMPLE.read_bytes()).graph.node
