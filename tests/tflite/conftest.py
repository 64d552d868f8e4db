"""Print the ONNX node-suite tally (passed / skipped by reason / failed) after the run."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    suite = sys.modules.get("test_onnx_node_suite")
    tally = getattr(suite, "SUMMARY", None)
    if tally:
        terminalreporter.write_sep("-", "ONNX node suite (float32 emitter vs LiteRT)")
        for key, count in sorted(tally.items()):
            terminalreporter.write_line(f"{key}: {count}")
