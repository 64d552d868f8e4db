"""Vela's constraint table and Python checker, read from the installed Vela at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx.parser
import pytest
from nirc.targets.ethos_u.constraints import ConstraintTable, constraint_table, python_checks, vela_architecture
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS

from nirc.errors import BackendError
from nirc.tflite import emit_tflite

TARGETS = {t.name: t for t in ETHOS_U_TARGETS}
U65 = TARGETS["ethos-u65-256"]
HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


@pytest.mark.parametrize(
    ("name", "arch"), [("ethos-u55-128", "EthosU55"), ("ethos-u65-512", "EthosU65"), ("ethos-u85-1024", "EthosU85")]
)
def test_architecture_follows_vela_accelerator_naming(name: str, arch: str) -> None:
    assert vela_architecture(TARGETS[name]) == arch


def test_table_lists_npu_operators_per_architecture() -> None:
    u65, u85 = constraint_table(U65), constraint_table(TARGETS["ethos-u85-256"])
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "RSQRT", "GELU", "TRANSPOSE"):
        assert u65.supported(op), op
    for op in ("SQRT", "POW", "LOG_SOFTMAX", "SPACE_TO_DEPTH"):
        assert not u65.supported(op), op
    assert u85.supported("DIV") and not u65.supported("DIV")  # only the U85 divides on the NPU
    assert u65.supported("ARG_MAX") == u65.supported("ARGMAX")  # Regor's spelling


def test_generic_and_specific_constraints_split_like_vela_report() -> None:
    table = constraint_table(U65)
    assert "Tensors must have constant shape." in table.generic
    mean = table.specific("MEAN")
    assert "Reduction over depth is only supported if any of h,w,c == 1" in mean
    assert "Reduced axis must be less than 4096" in mean
    assert not set(mean) & set(table.generic)
    assert table.to_json()["ops"]["MEAN"] == list(mean)


def test_table_matches_vela_supported_ops_report(tmp_path: Path) -> None:
    """Every U55/U65 operator-specific sentence appears in the SUPPORTED_OPS.md Vela renders."""
    subprocess.run([sys.executable, "-m", "ethosu.vela", "--supported-ops-report"], cwd=tmp_path, check=True,
                   capture_output=True)  # fmt: skip
    report = " ".join((tmp_path / "SUPPORTED_OPS.md").read_text(encoding="utf-8").split())
    table = constraint_table(TARGETS["ethos-u55-128"])
    for op in ("MEAN", "AVERAGE_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "TRANSPOSE"):
        for sentence in table.specific(op):
            first_line = " ".join(sentence.splitlines()[0].split())
            assert first_line in report, (op, first_line)


def test_printed_reason_maps_to_its_constraint() -> None:
    table = constraint_table(U65)
    reason = (
        "Unsupported depth-reduction.  IFM: 1, 16, 16, 32 Reduction over depth is only supported if any of h,w,c == 1"
    )
    assert table.match("MEAN", reason) == "Reduction over depth is only supported if any of h,w,c == 1"
    printed = "kernel width: 9 out of range Kernel constraints: IF padding=VALID: Kernel product must be less than"
    printed += " or equal to 256*256 Kernel height must be less than or equal to 256. ELSE: Kernel width and height"
    printed += " must be less than or equal to 8"
    match = table.match("AVERAGE_POOL_2D", printed)  # the driver strips Regor's "- " bullets when joining lines
    assert match is not None and match.startswith("Kernel constraints:")
    assert table.match("MEAN", "something Vela never says") is None


def test_unknown_architecture_is_a_backend_error() -> None:
    from nirc.targets.ethos_u import constraints

    with pytest.raises(BackendError, match="EthosU99"):
        constraints._table("EthosU99")
    assert isinstance(constraint_table(U65), ConstraintTable)


def _int8_tflite(text: str) -> bytes:
    model = onnx.parser.parse_model(HEADER + text)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    names = [v.name for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)]
    ranges = dict.fromkeys(names, (-4.0, 4.0))
    return emit_tflite(model, dtype="int8", ranges=ranges).data


def test_python_checker_reports_each_failed_constraint_with_its_docstring() -> None:
    data = _int8_tflite(
        """g (float[1,8,4,4] x) => (float[1,8,12,12] y) {
            s = Constant <value = float[4] {1, 1, 3, 3}> ()
            y = Resize <mode = "nearest", coordinate_transformation_mode = "asymmetric",
                        nearest_mode = "floor"> (x, , s)
        }"""
    )
    (check,) = python_checks(data)
    assert check.op_type == "RESIZE_NEAREST_NEIGHBOR" and not check.on_npu
    (violation,) = check.violations
    assert violation.check == "constraint_resize"
    assert violation.constraint.startswith("The width and height of the IFM and OFM must match")
    assert violation.text().startswith(violation.constraint)


def test_python_checker_passes_supported_ops(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(_int8_tflite("g (float[1,8,4,4] x) => (float[1,8,4,4] y) { y = Sigmoid (x) }"))
    (check,) = python_checks(path)
    assert check.op_type == "LOGISTIC" and check.on_npu and check.violations == ()


def test_python_checker_rejects_garbage() -> None:
    with pytest.raises(BackendError, match="reader"):
        python_checks(b"TFL3" + bytes(np.arange(64, dtype=np.uint8)))
