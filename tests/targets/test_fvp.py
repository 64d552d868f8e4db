"""FVP backend: discovery, command line, counter parsing; a real run only where an FVP is installed."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from nirc.targets.ethos_u import fvp
from nirc.targets.ethos_u.sim import container

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_missing_fvp_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIRC_FVP", raising=False)
    assert fvp.find_fvp("ethos-u65-256", path=str(tmp_path)) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(fvp.FvpNotFoundError, match=r"FVP_Corstone_SSE-300_Ethos-U65.*Arm's developer website"):
        fvp.require_fvp("ethos-u65-256")
    with pytest.raises(fvp.FvpNotFoundError, match="does not exist"):
        fvp.find_fvp("ethos-u55-128", tmp_path / "nope")


def test_fvp_found_on_path(tmp_path: Path) -> None:
    exe = tmp_path / "FVP_Corstone_SSE-300_Ethos-U55"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert fvp.find_fvp("ethos-u55-128", path=str(tmp_path)) == exe
    assert fvp.find_fvp("ethos-u65-256", path=str(tmp_path)) is None


def test_runner_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    axf = tmp_path / "runner.axf"
    axf.write_bytes(b"\x7fELF")
    assert fvp.find_runner("ethos-u65-256", axf) == axf
    monkeypatch.setenv("NIRC_ETHOSU_RUNNER", str(axf))
    assert fvp.find_runner("ethos-u65-256") == axf
    monkeypatch.delenv("NIRC_ETHOSU_RUNNER")
    try:
        fvp.find_runner("ethos-u65-256")
    except fvp.FvpNotFoundError as exc:
        assert "mlia-ethos-u" in str(exc)


def test_command_line_uses_runner_addresses() -> None:
    cmd = fvp.fvp_command(
        Path("/fvp"), Path("/r.axf"), Path("/m.tflite"), Path("/i.bin"), Path("/o.bin"), 10, "ethos-u65-256", 256
    )
    assert cmd[:3] == ["/fvp", "-a", "/r.axf"]
    assert "/m.tflite@0x90000000" in cmd and "/i.bin@0x92000000" in cmd
    assert "cpu0=/o.bin@Memory:0x93000000,10" in cmd and "ethosu.num_macs=256" in cmd
    u85 = fvp.fvp_command(Path("/f"), Path("/r"), Path("/m"), Path("/i"), Path("/o"), 1, "ethos-u85-256", 256)
    assert "mps4_board.subsystem.ethosu.num_macs=256" in u85


def test_counter_parsing() -> None:
    payload = [{"samples": [{"name": "NPU ACTIVE", "value": [1234]}, {"name": "NPU TOTAL", "value": [2000]}]}]
    line = "<metrics>" + base64.b64encode(json.dumps(payload).encode()).decode() + "</metrics>"
    counters = fvp.parse_counters(f"INFO - boot\n{line}\nINFO - done\n")
    assert counters == {"NPU ACTIVE": 1234, "NPU TOTAL": 2000}


def _fvp_or_skip(target: str) -> Path:
    found = fvp.find_fvp(target)
    if found is None:
        names = ", ".join(fvp.FVP_NAMES[fvp.npu_family(target)])
        pytest.skip(f"no FVP found for {target}: {names} not on PATH and NIRC_FVP unset")
    return found


@pytest.mark.parametrize("target", ["ethos-u65-256", "ethos-u55-128"])
def test_fvp_matches_reference(target: str, tmp_path: Path) -> None:
    _fvp_or_skip(target)
    from nirc.pipeline import optimize

    optimize(EXAMPLES / "tiny_cnn.onnx", target, outdir=tmp_path / "out", require_fit=False)
    vela = tmp_path / "out" / "tiny_cnn_vela.tflite"
    model = container.load(vela)
    t = model.tensors[model.inputs[0]]
    x = np.random.default_rng(0).integers(-128, 128, size=t.shape, dtype=np.int8)
    result = fvp.validate_fvp(vela, tmp_path / "out" / "tiny_cnn_int8.tflite", {t.name: x}, target)
    assert result.method == "fvp" and result.bit_exact, result.first_divergence
    assert result.details["counters"].get("NPU ACTIVE", 0) > 0, os.environ.get("PATH")
