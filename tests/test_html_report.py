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
