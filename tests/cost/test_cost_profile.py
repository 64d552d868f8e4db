"""Block builders, the profile-blocks sweep and the cost CLI functions."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from nirc.cost import cli as cost_cli
from nirc.cost.blocks import BLOCK_KINDS, BlockSpec, build_block
from nirc.cost.profile import MAX_FM_ELEMENTS, compare, read_csv, sweep
from nirc.ir import IRModel


@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_blocks_keep_the_feature_map_size(kind: str) -> None:
    model = IRModel.load(build_block(BlockSpec(kind, 10, 12, 32)))
    (inp,), (out,) = model.graph.inputs, model.graph.outputs
    assert list(inp.shape) == list(out.shape) == [1, 32, 10, 12]


def test_block_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown block kind"):
        BlockSpec("nope", 7, 7, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        BlockSpec("gconv3x3_g4", 7, 7, 6)


def test_sweep_skips_absurd_sizes() -> None:
    specs = sweep()
    assert {s.kind for s in specs} == set(BLOCK_KINDS)
    assert all(s.h * s.w * s.c <= MAX_FM_ELEMENTS for s in specs)
    assert BlockSpec("conv3x3", 112, 112, 64) in specs
    assert BlockSpec("conv3x3", 112, 112, 128) not in specs


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"nirc {command}")
    cost_cli.add_arguments(parser, command)
    return parser


def test_profile_blocks_quick_writes_csv_with_every_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser("profile-blocks").parse_args(["--quick", "-o", str(tmp_path), "-j", "1", "--target", "ethos-u65"])
    assert cost_cli.run(args) == 0
    path = tmp_path / "profile_blocks_ethos-u65-256.csv"
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    for column in ("type", "H", "W", "C", "macs", "params", "weight_bytes", "cycles", "time_ms",
                   "sram_used_bytes", "sram_traffic_bytes", "dram_traffic_bytes", "mac_util"):  # fmt: skip
        assert column in header
    rows = read_csv(path)
    assert {r.type for r in rows} == set(BLOCK_KINDS)
    assert len(rows) == len(sweep(quick=True))
    for r in rows:
        assert r.cycles > 0 and r.time_ms == pytest.approx(r.cycles / 1e6)
        assert 0 <= r.mac_util <= 1
        assert r.mac_util == pytest.approx(r.macs / (r.cycles * 256), rel=1e-4)
    assert next(r for r in rows if r.type == "pool_residual").params == 0
    out = capsys.readouterr().out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "profile_blocks_ethos-u65-256_latency_vs_macs.png").is_file()
        assert (tmp_path / "profile_blocks_ethos-u65-256_latency_vs_size.png").stat().st_size < 300_000
    else:
        assert "matplotlib is not installed" in out
    pairs = compare(rows, "fused_mbconv_e4", "mbconv_e6")
    assert len(pairs) == 4 and all(p.param_ratio > 1 for p in pairs)


def test_profile_blocks_without_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _parser("profile-blocks").parse_args(
        ["--quick", "-o", str(out), "--types", "pwconv1x1,dwconv3x3", "--no-plots"]
    )
    assert cost_cli.run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["profile_blocks_ethos-u65-256.csv"]
    assert {r.type for r in read_csv(out / "profile_blocks_ethos-u65-256.csv")} == {"pwconv1x1", "dwconv3x3"}


def test_cache_command(tmp_path: Path, cost_cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _parser("profile-blocks").parse_args(["--quick", "-o", str(tmp_path), "--types", "ghost", "--no-plots"])
    cost_cli.run(run)
    capsys.readouterr()
    assert cost_cli.run(_parser("cache").parse_args(["info"])) == 0
    info = capsys.readouterr().out
    assert str(cost_cache_dir / "cost") in info and "entries: 4" in info
    assert cost_cli.run(_parser("cache").parse_args(["clear"])) == 0
    assert "removed 4" in capsys.readouterr().out
    cost_cli.run(_parser("cache").parse_args(["info"]))
    assert "entries: 0" in capsys.readouterr().out


def test_cli_wiring_contract() -> None:
    assert set(cost_cli.COMMANDS) == {"profile-blocks", "cache"}
    with pytest.raises(ValueError, match="unknown cost command"):
        cost_cli.add_arguments(argparse.ArgumentParser(), "nope")


def test_profile_blocks_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    args = _parser("profile-blocks").parse_args(["--quick", "-o", str(tmp_path / "out"), "--types", "bsconv"])
    assert cost_cli.run(args) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".csv"]
