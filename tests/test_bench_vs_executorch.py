"""benchmarks/vs_executorch.py: the parts that need neither torch nor ExecuTorch.

The export stage needs ExecuTorch (an optional extra in its own venv); what is checked here is
that the shared inputs are deterministic and that the table stage writes its section into
BENCHMARKS.md in a way ``benchmarks/run.py`` keeps.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vs = _load("vs_executorch")
run = _load("run")


def test_inputs_are_deterministic_images() -> None:
    a = vs.dead_leaves_image(3, 64)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, vs.dead_leaves_image(3, 64))
    assert not np.array_equal(a, vs.dead_leaves_image(4, 64))
    # Natural-image-like: neighbouring pixels are strongly correlated (white noise would give ~0).
    gray = a.mean(axis=0)
    assert np.corrcoef(gray[:, :-1].ravel(), gray[:, 1:].ravel())[0, 1] > 0.5


def test_classifier_inputs_are_imagenet_normalised() -> None:
    spec = vs.ModelSpec("m", "torchvision", 32, "m", True)
    x = vs.model_inputs(spec, [0, 1])
    raw = np.stack([vs.dead_leaves_image(s, 32) for s in (0, 1)])
    np.testing.assert_allclose(x[:, 0] * 0.229 + 0.485, raw[:, 0], atol=1e-6)
    detector = vs.ModelSpec("d", "ultralytics", 32, "d.yaml", False)
    np.testing.assert_array_equal(vs.model_inputs(detector, [0, 1]), raw)


def test_partitions_add_time_and_traffic_but_not_memory() -> None:
    a = {"inference_time_ms": 1.0, "sram_used_kib": 100.0, "dram_weight_bytes": 10.0}
    b = {"inference_time_ms": 2.0, "sram_used_kib": 50.0, "dram_weight_bytes": 5.0}
    assert vs.combine_partitions([a, b]) == {
        "inference_time_ms": 3.0,
        "sram_used_kib": 100.0,
        "dram_weight_bytes": 15.0,
    }


def _vela(ms: float) -> dict[str, float]:
    return {
        "inference_time_ms": ms,
        "sram_used_kib": 300.0,
        "dram_feature_map_read_bytes": 2e6,
        "dram_feature_map_write_bytes": 1e6,
        "dram_weight_bytes": 3e6,
        "cpu_ops": 0,
    }


def test_table_section_replaces_itself_and_survives_run_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    et = {
        "resnet18": {
            "onnx_sha256": "x",
            "executorch": {
                "version": "1.5.1",
                "torch_version": "2.14.1",
                "vela_version": "5.2.0",
                "partitions": 1,
                "cpu_ops": {"quantize_per_tensor": 1, "dequantize_per_tensor": 1},
                "vela": _vela(10.0),
                "compile_s": 30.0,
                "snr": {"tosa_int8_db": 30.0, "tosa_int8_top1": 1.0},
            },
        }
    }
    nirc_row = {
        "nirc_version": "0.1.0",
        "vela_version": "5.2.0",
        "vela": _vela(8.0),
        "snr_heldout_db": 31.0,
        "top1_heldout": 1.0,
        "compile_s": 20.0,
    }
    (tmp_path / "et.json").write_text(json.dumps(et))
    (tmp_path / "nirc.json").write_text(json.dumps({"resnet18": {"full": nirc_row, "base": nirc_row}}))
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nthe main table\n")
    for attr, name in (("ET_JSON", "et.json"), ("NIRC_JSON", "nirc.json"), ("TABLE_MD", "t.md")):
        monkeypatch.setattr(vs, attr, tmp_path / name)
    monkeypatch.setattr(vs, "BENCHMARKS_MD", bench)
    vs.stage_table()
    vs.stage_table()
    text = bench.read_text()
    assert text.startswith("# Benchmarks\n\nthe main table\n")
    assert text.count(vs.SECTION_BEGIN) == 1 and text.count(vs.SECTION_END) == 1
    assert f"| resnet18 | {dict(vs.VARIANT_LABELS)['full']} | 8.000 |" in text and "| 0.800 |" in text
    kept = run.kept_sections(bench)
    assert kept.strip().startswith(vs.SECTION_BEGIN) and kept.strip().endswith(vs.SECTION_END)
    assert "the main table" not in kept
