"""report.html renders in a real headless Chromium without console errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nirc.pipeline import optimize

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium not installed (CI installs it: apt-get install chromium)",
)


@needs_chromium
def test_report_html_renders_without_console_errors(tmp_path: Path) -> None:
    assert CHROMIUM is not None, "CI must provide chromium"
    out = tmp_path / "out"
    optimize(ROOT / "examples" / "tiny_cnn.onnx", "ethos-u65", outdir=out)
    page = (out / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, *profile, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for heading in ("Per-layer cycles (Vela)", "Activation memory over the schedule", "Passes", "int8 vs float"):
        assert heading in dom.stdout
    assert dom.stdout.count("<svg") == 2 and "fuse-batchnorm" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, *profile, "--window-size=1200,1600", f"--screenshot={shot}", page],
        capture_output=True, timeout=120, check=True,
    )
    assert shot.stat().st_size > 10_000  # a blank page is a few KiB


# -- what the page says (issue 21 item 8); rendered from one real run, no browser needed -----------

import copy  # noqa: E402
import re  # noqa: E402
from typing import Any  # noqa: E402

import nirc  # noqa: E402
from nirc.html_report import render  # noqa: E402


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result = nirc.optimize(ROOT / "examples" / "tiny_cnn.onnx", "ethos-u65")
    return result.report


def _text(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def test_every_layer_is_in_a_table_and_the_bars_say_they_are_the_top(report: dict[str, Any]) -> None:
    page = render(report)
    names = {layer["name"] for layer in report["vela"]["layers"]}
    for name in names:
        assert f"<td class=\"\">{name}</td>" in page
    assert f"the {min(40, len(names))} slowest of {len(names)}" in _text(page)
    many = copy.deepcopy(report)
    template = many["vela"]["layers"][0]
    many["vela"]["layers"] = [{**template, "name": f"layer{i}", "op_cycles": i} for i in range(55)]
    page = render(many)
    assert "the 40 slowest of 55" in _text(page) and "<td class=\"\">layer0</td>" in page  # bars stop, table not


def test_npu_validation_and_calibration_are_shown(report: dict[str, Any]) -> None:
    text = _text(render(report))
    npu = report["validation"]["npu"]
    assert f"bit-exact on {npu['samples']} inputs (sim)" in text
    assert report["calibration"]["source"] in text and "Calibration:" in text


def test_memory_chart_has_a_y_scale(report: dict[str, Any]) -> None:
    svg = render(report).split('aria-label="memory timeline"')[1].split("</svg>")[0]
    assert "live KiB" in svg
    ticks = re.findall(r'text-anchor="end">([\d.,]+)</text>', svg)
    assert len(ticks) >= 3 and ticks[0] == "0.0"


def test_one_peak_figure_and_labelled_op_counts(report: dict[str, Any]) -> None:
    distinct = copy.deepcopy(report)
    distinct["model"]["after"]["peak_activation_bytes"] = 7_654_321  # the logical (CPU-runtime) measure
    page = render(distinct)
    text = _text(page)
    peak = report["memory"]["peak_bytes"]
    assert f"{peak / 1024:.1f} KiB peak activations (Vela order" in text
    assert f"peak {peak / 1024:.1f} KiB at" in text  # the chart's label agrees with the card
    assert "7,654,321" not in text and f"{7_654_321 / 1024:.1f}" not in text
    placed = report["placement"]["observed"]
    assert f"{placed['npu_ops']} / {placed['cpu_ops']} TFLite ops on NPU / CPU" in text
    assert f"as {report['vela']['npu_ops']} NPU operations after its own fusions" in text


def test_sram_spill_is_explained_beside_the_platform_verdict(report: dict[str, Any]) -> None:
    spilled = copy.deepcopy(report)
    spilled["fits"]["sram"]["fits"] = False
    spilled["memory"]["peak_bytes"] = 2 * spilled["fits"]["sram"]["arena_cache_bytes"]
    page = render(spilled)
    assert "Vela spills to DRAM (slower, still runs)" in _text(page)
    assert '<b class="warn">activations' in page
    assert "platform memory (weights + arena)" in _text(page)


def test_top1_is_a_percentage(report: dict[str, Any]) -> None:
    shown = copy.deepcopy(report)
    shown["validation"]["outputs"][0]["top1_agreement"] = 1.0
    text = _text(render(shown))
    assert "100%" in text and " 1.0 " not in text.split("top-1 agreement")[1]
