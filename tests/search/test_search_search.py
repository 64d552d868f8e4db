"""The searcher end to end on a small space: real emission and Vela, a budget, the files, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from nirc.cli import main
from nirc.cost.cache import cache_info
from nirc.search import Budget, Row, search
from nirc.search.search import rank

SPACE = {"target": "ethos-u65", "input_size": 64, "families": ["mobilenetv2", "resnet"],
         "variants": ["w0.35", "d10-w0.5"], "classes": 10}  # fmt: skip


def _row(name: str, ms: float | None, macs: int, fits: bool | None = True, mib: float = 1.0) -> Row:
    return Row(name, "f", "v", 64, ms, macs, 0, mib, mib, fits, 0)


def test_rank_recommends_the_pareto_front_within_the_budget() -> None:
    rows = [_row("slow-big", 5.0, 500), _row("fast-small", 1.0, 100), _row("fast-big", 1.5, 400),
            _row("dominated", 2.0, 300), _row("too-heavy", 1.2, 350, mib=9.0), _row("no-fit", 0.5, 900, fits=False),
            _row("failed", None, 10)]  # fmt: skip
    ranked = {r.name: r for r in rank(rows, Budget(latency_ms=2.0, max_mib=4.0))}
    assert {n for n, r in ranked.items() if r.recommended} == {"fast-small", "fast-big"}
    assert {n for n, r in ranked.items() if r.pareto} == {"fast-small", "too-heavy", "fast-big", "slow-big"}
    assert not ranked["too-heavy"].meets and not ranked["no-fit"].meets and not ranked["failed"].meets
    assert [r.name for r in rank(rows, Budget())][-1] == "failed"  # costed rows first, fastest first


def test_search_costs_ranks_writes_and_caches(tmp_path: Path, cost_cache_dir: Path) -> None:
    result = search(budget=Budget(latency_ms=10.0), **SPACE)  # type: ignore[arg-type]
    names = [r.name for r in result.rows]
    assert sorted(names) == ["mobilenetv2-w0.35-64", "resnet-d10-w0.5-64"]
    assert all(r.latency_ms is not None and r.latency_ms > 0 and r.fits for r in result.rows)
    latencies = [r.latency_ms or 0.0 for r in result.rows]
    assert latencies == sorted(latencies)
    assert result.recommended and all(r.meets for r in result.recommended)
    written = result.write(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "search.json").read_text())
    assert report["recommended"] == [r.name for r in result.recommended]
    for name in report["recommended"]:
        onnx.checker.check_model(onnx.load(str(tmp_path / "out" / "onnx" / f"{name}.onnx")))
    assert (tmp_path / "out" / "search.md") in written
    entries = cache_info(cost_cache_dir).entries
    assert entries >= 2  # one search entry per candidate (plus the oracle's own)
    again = search(budget=Budget(latency_ms=10.0), **SPACE)  # type: ignore[arg-type]
    assert again.rows == result.rows
    assert cache_info(cost_cache_dir).entries == entries  # everything came from the cache


def test_a_budget_nothing_meets_recommends_nothing() -> None:
    result = search(budget=Budget(latency_ms=1e-6), **SPACE)  # type: ignore[arg-type]
    assert result.recommended == []
    assert "none (no candidate meets the budget)" in result.markdown()


def test_cli_search_and_model_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    code = main(["search", "--input-size", "64", "--families", "resnet", "--variants", "d10-w0.5", "--classes", "10",
                 "--latency-ms", "50", "-o", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "recommended: resnet-d10-w0.5-64" in text
    assert (out / "onnx" / "resnet-d10-w0.5-64.onnx").is_file()
    model = Path(__file__).resolve().parents[2] / "examples" / "tiny_cnn.onnx"
    code = main(["-q", "search", "--model", str(model), "--widths", "0.5,1.0", "-o", str(tmp_path / "m"), "--no-plot"])
    assert code == 0
    report = json.loads((tmp_path / "m" / "search.json").read_text())
    assert sorted(c["name"] for c in report["candidates"]) == ["tiny_cnn-w0.5-32", "tiny_cnn-w1.0-32"]


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["search", "--families", "yolo", "-o", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "nirc: error: family 'yolo' is for detection, not classification\n"
    assert main(["search", "--model", str(tmp_path / "missing.onnx"), "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
