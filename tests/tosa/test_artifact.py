"""`nirc validate VELA MODEL_npu.tosa`: a TOSA-form artifact is checked against what its TOSA graph specifies."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from nirc_testing import conv_silu_then

from nirc.cli import main
from nirc.errors import ModelLoadError
from nirc.pipeline import optimize
from nirc.tosa.artifact import find_tosa, load, validate


def _silu_then(tail: str, out_shape: str) -> onnx.ModelProto:
    return conv_silu_then(tail, out_shape, size=16, seed=23)


def _lut_offset(vela: bytes, tosa: bytes) -> int:
    """Where the compiled file holds a 256-byte table that the TOSA graph also holds (the SiLU TABLE)."""
    windows = {tosa[i : i + 256] for i in range(len(tosa) - 255)}
    hits = [i for i in range(len(vela) - 255) if vela[i : i + 256] in windows and len(set(vela[i : i + 256])) > 64]
    assert hits, "no TABLE found in the compiled file"
    return hits[0]


def test_tosa_form_artifact_validates_and_a_corrupted_table_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _silu_then("y = Identity (a)", "[1,32,16,16]")
    out = tmp_path / "out"
    result = optimize(model, outdir=out, npu_format="tosa", no_hw_passes=True)
    assert result.report["npu_format"]["format"] == "tosa"
    vela, tosa = out / "model_vela.tflite", out / "model_npu.tosa"
    assert (out / "model_npu.json").is_file() and load(tosa).tflite_outputs
    assert main(["validate", str(vela), str(tosa), "--samples", "2"]) == 0
    assert "bit-exact on 2 random inputs" in capsys.readouterr().out
    # Named with the int8 TFLite, the artifact's own mark still picks the TOSA graph as the reference.
    assert main(["validate", str(vela), str(out / "model_int8.tflite"), "--samples", "1"]) == 0
    assert "sim vs TOSA reference" in capsys.readouterr().out
    data = bytearray(vela.read_bytes())
    at = _lut_offset(bytes(data), tosa.read_bytes()) + 200  # one entry of the table, a positive input code
    data[at] = (data[at] + 1) % 256
    broken = tmp_path / "broken_vela.tflite"
    broken.write_bytes(bytes(data))
    assert validate(broken, tosa, samples=2).max_abs_diff_lsb == 1
    assert main(["validate", str(broken), str(tosa), "--samples", "2"]) == 9  # zero tolerance, as TFLite form
    assert "first at output" in capsys.readouterr().out


def test_split_artifact_ships_its_tflite_part(tmp_path: Path) -> None:
    """A model the lift refuses an op of: MODEL_npu_rest.tflite holds it, validate runs both parts."""
    model = _silu_then(
        'sc = Constant <value_floats = [1.0, 1.0, 2.0, 2.0]> ()\n'
        ' y = Resize <mode = "linear", coordinate_transformation_mode = "half_pixel"> (a, , sc)',
        "[1,32,32,32]",
    )
    out = tmp_path / "out"
    result = optimize(model, outdir=out, npu_format="tosa", no_hw_passes=True, passes=["fold-constants"])
    fmt = result.report["npu_format"]
    assert fmt["format"] == "tosa" and fmt["tflite_part_ops"] == {"RESIZE_BILINEAR": 1}, fmt
    assert (out / "model_npu_rest.tflite").is_file()
    assert result.report["validation"]["npu"]["bit_exact"], result.report["validation"]["npu"]
    assert validate(out / "model_vela.tflite", out / "model_npu.tosa", samples=2).max_abs_diff_lsb == 0


def test_stale_tosa_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    optimize(_silu_then("y = Identity (a)", "[1,32,16,16]"), outdir=out, npu_format="tosa", no_hw_passes=True)
    tosa = out / "model_npu.tosa"
    tosa.write_bytes(tosa.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="hash differs"):
        find_tosa(out / "model_vela.tflite", out / "model_int8.tflite")
    assert main(["validate", str(out / "model_vela.tflite"), str(out / "model_int8.tflite")]) != 0


def test_missing_description_is_a_load_error(tmp_path: Path) -> None:
    tosa = tmp_path / "model_npu.tosa"
    tosa.write_bytes(b"\0\0\0\0TOSA")
    with pytest.raises(ModelLoadError, match=r"model_npu\.json"):
        load(tosa)
    assert main(["validate", str(tmp_path / "x_vela.tflite"), str(tosa)]) != 0
