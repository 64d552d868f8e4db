"""nirc.timing: stages, events and peak RSS, and the profile optimize() puts in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nirc import timing
from nirc.cli import main
from nirc.report import format_profile, profile_section


def test_events_count_only_while_recording() -> None:
    timing.count("vela", 1.0)  # nothing records: a no-op, not an error
    with timing.recording() as profile:
        timing.count("vela", 0.5)
        with timing.timed("vela"):
            pass
        timing.count("cost.cache_hit", n=3)
    assert profile.events["vela"].count == 2
    assert profile.events["vela"].seconds >= 0.5
    assert profile.events["cost.cache_hit"].count == 3
    assert timing.current() is None


_PEAK_SCRIPT = """
import json
import numpy as np
from nirc import timing
with timing.recording() as profile:
    stages = timing.Stages(profile)
    stages.next("small")
    timing.count("vela")
    stages.next("big")
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB resident
    block[::512] = 2.0
    del block
    stages.next("small again")
    stages.end()
print(json.dumps({"names": [s.name for s in profile.stages], "events": [sorted(s.events) for s in profile.stages],
                  "peaks": [s.peak_rss_bytes for s in profile.stages], "peak": profile.peak_rss_bytes}))
"""


def test_stages_split_events_and_measure_their_own_peak() -> None:
    # A fresh interpreter: after other tests the allocator may keep freed memory mapped (a library can raise
    # glibc's mmap threshold), which would make the freed 64 MiB look resident in the third stage.
    run = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout)
    assert result["names"] == ["small", "big", "small again"]
    assert result["events"][0] == ["vela"] and result["events"][1] == []
    _, big, after = result["peaks"]
    assert big >= after + 48 * 1024 * 1024  # the 64 MiB freed before the third stage are not its peak
    assert result["peak"] == big


def test_profile_section_and_its_table() -> None:
    with timing.recording() as profile:
        stages = timing.Stages(profile)
        stages.next("passes")
        timing.count("vela", 2.0)
        timing.oracle_call(timing.OracleCall("tile-activations", 14, 0.5, 2.0))
        stages.end()
    timing.oracle_call(timing.OracleCall("not recorded", 1, 0.0, 0.0))
    section = profile_section(profile, [], weight_bytes=1000)
    assert section["events"]["vela"] == {"count": 1, "seconds": 2.0}
    assert section["oracle_calls"] == [
        {"label": "tile-activations", "nodes": 14, "emit_seconds": 0.5, "vela_seconds": 2.0}
    ]
    assert section["peak_rss_over_weights"] == round(section["peak_rss_bytes"] / 1000, 2)
    text = format_profile(section)
    assert "passes" in text and "vela x1 2.0 s" in text and "tile-activations (14 nodes) 0.5+2.0 s" in text


def test_optimize_verbose_prints_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
    assert main(["optimize", str(example), "-o", str(tmp_path / "out"), "--no-compile", "-q", "-v"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("profile: ") and "\n  load " in err and "\n  passes " in err
