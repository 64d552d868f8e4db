"""The Vela cost oracle and its on-disk cache, with real Vela on tiny blocks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nirc.analysis import analyze
from nirc.cost import cache_info, cache_root, clear_cache, estimate, evaluate_many
from nirc.cost.blocks import BlockSpec, build_block
from nirc.cost.cache import entry_path
from nirc.cost.oracle import match_tensor
from nirc.cost.signature import signature
from nirc.ir import IRModel
from nirc.target import Target


def test_estimate_is_plausible(u65: Target) -> None:
    model = build_block(BlockSpec("conv3x3", 7, 7, 16))
    cost = estimate(model, u65)
    assert cost.cycles > 0
    assert cost.npu_cycles > 0
    assert cost.clock_hz == 1e9  # Ethos_U65_High_End
    assert cost.time_s == pytest.approx(cost.cycles / cost.clock_hz)
    assert cost.time_ms == pytest.approx(1e3 * cost.cycles / cost.clock_hz)
    assert cost.macs == analyze(IRModel.load(model)).macs == 7 * 7 * 16 * 16 * 9
    assert 0 < cost.mac_utilisation(u65.macs) <= 1
    assert (cost.npu_ops, cost.cpu_ops) == (1, 0)
    assert cost.weight_bytes == 16 * 16 * 9  # Vela counts the int8 weights (not the bias)
    assert cost.encoded_weight_bytes > 0
    assert cost.dram_traffic_bytes >= 2 * 7 * 7 * 16  # input read and output written in the DRAM arena
    assert all(row.tensor >= 0 for row in cost.layers)


def test_cache_hit_is_identical_and_much_faster(u65: Target, cost_cache_dir: Path) -> None:
    model = build_block(BlockSpec("mbconv_e6", 14, 14, 16))
    start = time.perf_counter()
    cold = estimate(model, u65)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = estimate(model, u65)
    warm_s = time.perf_counter() - start
    assert warm == cold
    assert warm_s * 10 < cold_s, (cold_s, warm_s)
    assert entry_path(signature(model, u65)).is_file()


def test_cache_directory_from_environment(u65: Target, cost_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == cost_cache_dir
    estimate(build_block(BlockSpec("pwconv1x1", 7, 7, 16)), u65)
    entries = list(cost_cache_dir.glob("cost/*/*.json"))
    assert len(entries) == 1
    monkeypatch.delenv("NIRC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cost_cache_dir / "xdg"))
    assert cache_root() == cost_cache_dir / "xdg" / "nirc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(cost_cache_dir / "home"))
    assert cache_root() == cost_cache_dir / "home" / ".cache" / "nirc"


def test_clear_cache_and_info(u65: Target, cost_cache_dir: Path) -> None:
    assert cache_info().entries == 0
    for c in (16, 32):
        estimate(build_block(BlockSpec("dwconv3x3", 7, 7, c)), u65)
    info = cache_info()
    assert (info.path, info.entries) == (cost_cache_dir / "cost", 2)
    assert info.bytes > 0
    assert clear_cache() == 2
    assert cache_info().entries == 0


def test_unreadable_entry_is_a_miss(u65: Target) -> None:
    model = build_block(BlockSpec("pool_residual", 7, 7, 16))
    first = estimate(model, u65)
    path = entry_path(signature(model, u65))
    path.write_text("{not json", encoding="utf-8")
    assert estimate(model, u65) == first
    assert path.read_text(encoding="utf-8").startswith("{")


def test_no_cache_writes_nothing(u65: Target) -> None:
    estimate(build_block(BlockSpec("ghost", 7, 7, 16)), u65, use_cache=False)
    assert cache_info().entries == 0


def test_evaluate_many_in_parallel_equals_in_process(u65: Target) -> None:
    specs = [BlockSpec("conv3x3", 7, 7, 16), BlockSpec("ghost", 7, 7, 32), BlockSpec("bsconv", 14, 14, 16)]
    models = [build_block(s) for s in specs]
    candidates = [models[0], models[1], models[0], models[2]]  # a duplicate is compiled once, reported twice
    serial = evaluate_many(candidates, u65, jobs=1, use_cache=False)
    parallel = evaluate_many(candidates, u65, jobs=2, use_cache=False)
    assert parallel == serial
    assert [c.cycles for c in serial] == [estimate(m, u65, use_cache=False).cycles for m in candidates]
    assert cache_info().entries == 0


def test_evaluate_many_fills_and_uses_the_cache(u65: Target) -> None:
    models = [build_block(BlockSpec("pwconv1x1", 7, 7, c)) for c in (16, 32)]
    first = evaluate_many(models, u65, jobs=2)
    assert cache_info().entries == 2  # written by the workers into this test's directory
    assert evaluate_many(models, u65, jobs=2) == first


def test_estimate_accepts_irmodel_and_target_name(u65: Target) -> None:
    model = build_block(BlockSpec("conv3x3", 7, 7, 16))
    assert estimate(IRModel.load(model), "ethos-u65") == estimate(model, u65)


def test_other_target_other_cost(u65: Target) -> None:
    model = build_block(BlockSpec("conv3x3", 14, 14, 32))
    assert estimate(model, u65).cycles != estimate(model, "ethos-u55-128").cycles


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("conv1", 1),  # the tensor itself
        ("conv1/pad", 1),  # an emitter helper tensor
        ("conv1_intermediate", 1),  # a Vela-made tensor
        ("/layer1/conv/Conv_output_0", 2),  # PyTorch names contain '/'
        ("/layer1/conv/Conv_output_0/pad", 2),
        ("conv10", -1),  # a prefix must end at a separator
        ("other", -1),
    ],
)
def test_match_tensor(name: str, expected: int) -> None:
    assert match_tensor(name, {"conv1": 1, "/layer1/conv/Conv_output_0": 2}) == expected
