"""nirc compress end to end on the trained digits CNN with the real Vela: cost tables, the greedy search,
the budget reached, the per-layer report, an unreachable budget (exit 10) and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from nirc.compress import plan, search
from nirc.compress.api import EXIT_BUDGET_NOT_MET, BudgetNotMetError, CompressResult, _canonical, compress
from nirc.cost import estimate
from nirc.errors import NircError
from nirc.ir import IRModel
from nirc.plugin import load_registry

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DATA = ROOT / "examples" / "digits_val.npz"
TARGET = load_registry().get_target("ethos-u65")


@pytest.fixture(scope="module")
def canonical() -> tuple[onnx.ModelProto, list[plan.Unit], search.CostTable]:
    model = IRModel.load(DIGITS)
    _canonical(model, TARGET)
    units = plan.find_units(model, 16)
    proto = model.to_proto()
    return proto, units, search.cost_table(proto, units, search.vela_cycles(TARGET), 16, lambda _m: None)


def test_cost_tables_come_from_vela(canonical: tuple[onnx.ModelProto, list[plan.Unit], search.CostTable]) -> None:
    proto, units, table = canonical
    assert table.total == estimate(proto, TARGET).cycles
    cp_ratios = {u.ratios[i] for u in units for i in plan.cp_levels(u, 16)}
    assert cp_ratios  # the digits CNN's 3x3 convs have CP forms
    assert table.probes == len({r for u in units if u.method == "prune" for r in u.ratios if r}) + len(
        {r for u in units if u.method == "lowrank" for r in u.ratios if r}
    ) + len(cp_ratios)
    assert set(table.cp_rho) == cp_ratios and all(v > 0 for rho in table.cp_rho.values() for v in rho.values())
    # Pruning conv3's 72 channels to 48 makes conv3 itself cheaper on the NPU.
    assert table.prune_rho[0.25]["conv3"] < 0.9
    assert search.predict(table, units, {}) == pytest.approx(table.total)


def test_a_cp_level_is_chosen_only_where_it_saves_more_per_unit_of_error() -> None:
    """Cheaper and as accurate: CP; cheaper but much less accurate per cycle saved: Tucker-2 stays."""
    unit = plan.Unit("lowrank:c", "lowrank", "c", 0, ("c",), (0.0, 0.5, 0.75), ("full", "ranks 64/64", "ranks 32/32"),
                     (128, 128, 3, 3))  # fmt: skip
    table = search.CostTable(total=1000.0, base={"c": 1000.0}, lowrank_rho={0.5: {"c": 0.6}, 0.75: {"c": 0.5}},
                             cp_rho={0.5: {"c": 0.5}, 0.75: {"c": 0.4}})  # fmt: skip
    sens = search.Sensitivity({unit.id: (0.0, 0.10, 0.20)}, 2)
    assert search.cp_candidates([unit], table, 16) == {unit.id: (1, 2)}
    # Level 1: CP saves 500 for 0.11 (Tucker-2: 400 for 0.10) -> CP; level 2: 600 for 0.40 vs 500 for 0.20 -> Tucker-2.
    cp = search.Sensitivity({unit.id: (0.0, 0.11, 0.40)}, 2)
    (chosen,), new_table, errors = search.choose_forms([unit], table, sens, cp, 16)
    assert chosen.forms == ("", "cp", "") and chosen.actions[1].startswith("CP rank")
    assert new_table.lowrank_rho[0.5]["c"] == 0.5 and new_table.lowrank_rho[0.75]["c"] == 0.5
    assert errors.error[unit.id] == (0.0, 0.11, 0.20)
    assert table.lowrank_rho[0.5]["c"] == 0.6 and unit.forms == ()  # inputs untouched


def test_greedy_meets_the_predicted_goal_and_does_nothing_when_met(
    canonical: tuple[onnx.ModelProto, list[plan.Unit], search.CostTable],
) -> None:
    _, units, table = canonical
    sens = search.Sensitivity({u.id: tuple(float(i) for i in range(u.levels)) for u in units}, 0)
    assert not any(search.greedy(units, table, sens, table.total).values())
    goal = 0.5 * table.total
    config = search.greedy(units, table, sens, goal)
    assert search.predict(table, units, config) <= goal
    assert any(config.values())


@pytest.fixture(scope="module")
def result() -> CompressResult:
    return compress(DIGITS, TARGET, speedup=2.0, calib=DATA, samples=256)


def test_compress_meets_a_speedup_budget(result: CompressResult) -> None:
    assert result.met
    measured = estimate(result.model, TARGET)
    assert result.original.latency_ms / measured.time_ms >= 2.0
    assert result.compressed.cycles == measured.cycles
    assert result.compressed.params < result.original.params
    assert result.compressed.output_error is not None and result.unrecovered.output_error is not None
    assert result.compressed.output_error < result.unrecovered.output_error
    assert result.compressed.top1 is not None and result.compressed.top1 > 0.85  # labelled npz: real accuracy
    report = result.to_json()
    assert report["budget"]["asked"] == "2x speedup" and report["met"] and report["reached"] >= 2.0
    assert report["layers"] and all(row["cycles"][1] < row["cycles"][0] for row in report["layers"])
    assert "| layer | method |" in result.markdown()


def test_size_budget() -> None:
    result = compress(DIGITS, TARGET, size_mib=0.02, calib=DATA, samples=128, methods=("prune",))
    assert result.met and result.compressed.size_mib <= 0.02
    assert all(row["method"] == "prune" for row in result.layers)


def test_greedy_with_a_second_budget_meets_both(
    canonical: tuple[onnx.ModelProto, list[plan.Unit], search.CostTable],
) -> None:
    """A latency goal that costs little and a size goal that binds: the plan meets both on paper."""
    proto, units, table = canonical
    sizes = search.cost_table(proto, units, search.weight_bytes, 16, lambda _m: None)
    sens = search.Sensitivity({u.id: tuple(float(i) for i in range(u.levels)) for u in units}, 0)
    latency_only = search.greedy(units, table, sens, 0.95 * table.total)
    assert search.predict(sizes, units, latency_only) > 0.3 * sizes.total  # the latency goal alone cuts fewer bytes
    both = search.greedy(units, table, sens, 0.95 * table.total, also=(sizes, 0.3 * sizes.total))
    assert search.predict(table, units, both) <= 0.95 * table.total
    assert search.predict(sizes, units, both) <= 0.3 * sizes.total


def test_latency_and_size_budgets_together() -> None:
    result = compress(DIGITS, TARGET, speedup=1.2, size_mib=0.02, calib=DATA, samples=128, methods=("prune",))
    assert result.met and result.compressed.size_mib <= 0.02
    assert result.original.latency_ms / result.compressed.latency_ms >= 1.2
    report = result.to_json()
    assert report["budget"]["asked"] == "1.2x speedup and 0.02 MiB" and report["budget"]["size_mib"] == 0.02
    assert result.markdown().startswith("Budget asked: 1.2x speedup and 0.02 MiB; reached:")


def test_cp_needs_lowrank_and_budgets_combine_only_as_latency_and_size() -> None:
    with pytest.raises(NircError, match="give lowrank too"):
        compress(DIGITS, TARGET, speedup=2.0, calib=DATA, methods=("prune", "cp"))
    with pytest.raises(NircError, match="one budget"):
        compress(DIGITS, TARGET, speedup=2.0, latency_ms=1.0, calib=DATA)


def test_unreachable_budget_raises_with_the_closest_result() -> None:
    with pytest.raises(BudgetNotMetError) as info:
        compress(DIGITS, TARGET, speedup=100.0, calib=DATA, samples=128, methods=("prune",))
    closest = info.value.result
    assert not closest.met and closest.reached() < 100.0
    assert "not met" in str(info.value) and info.value.exit_code == EXIT_BUDGET_NOT_MET


def _nirc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nirc.cli", *args], capture_output=True, text=True, check=False)


def test_cli_unmet_budget_writes_only_the_closest_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _nirc("compress", str(DIGITS), "--speedup", "100", "--calib", str(DATA), "--calib-count", "128",
                 "--methods", "prune", "-o", str(out), "-q")  # fmt: skip
    assert proc.returncode == EXIT_BUDGET_NOT_MET, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "compress_report.json",
        "compress_report.md",
        "digits_cnn_closest.onnx",
    ]
    assert json.loads((out / "compress_report.json").read_text())["met"] is False
    assert proc.stderr.count("\n") == 1 and "not met" in proc.stderr


def test_cli_met_budget_writes_the_model_and_its_optimize_artifacts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _nirc("compress", str(DIGITS), "--speedup", "1.5", "--calib", str(DATA), "--calib-count", "128",
                 "-o", str(out), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "digits_cnn_compressed.onnx").exists() and (out / "optimize" / "report.json").exists()
    report = json.loads((out / "compress_report.json").read_text())
    assert report["met"] and report["optimize"]["vela_ms"] == pytest.approx(
        report["compressed"]["latency_ms"], rel=0.05
    )


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--speedup", "2", "--calib", "missing.npz"], 2, "missing.npz"),
        (["--speedup", "0.5", "--calib", str(DATA)], 1, "speedup"),
        (["--calib", str(DATA)], 2, "one of the arguments"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], code: int, needle: str, tmp_path: Path) -> None:
    proc = _nirc("compress", str(DIGITS), *args, "-o", str(tmp_path / "o"))
    assert proc.returncode == code
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_labels_give_top1_only_when_present(tmp_path: Path) -> None:
    with np.load(DATA) as data:
        np.savez(tmp_path / "x.npz", input=data["input"][:64])
    result = compress(DIGITS, TARGET, speedup=1.2, calib=tmp_path / "x.npz", samples=64, methods=("prune",))
    assert result.compressed.top1 is None and result.compressed.top1_agreement is not None
