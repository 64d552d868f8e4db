"""nirc.progress: a counter on a terminal, throttled plain lines otherwise, silence without a reporter."""

from __future__ import annotations

import io
import time

from nirc import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_without_a_reporter() -> None:
    with progress.task("passes", total=3) as task:
        task.advance("x")
        progress.tick("Vela calls")
    assert task.done == 1 and task.ticks == {"Vela calls": 1}  # counted, shown nowhere


def test_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with progress.reporting(progress.Progress.on(stream)) as reporter:
        assert reporter is not None and not reporter.tty
        progress.message("compiling")
        with progress.task("passes", total=30) as task:
            for i in range(30):
                task.begin(f"pass{i}")
                progress.tick("Vela calls")
                task.advance()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "nirc: compiling..."
    assert lines[1].startswith("nirc: passes [") and "0/30" in lines[1]
    assert len(lines) == 2  # throttled: the 30 passes took well under the 5 s interval
    assert "\r" not in stream.getvalue()


def test_counter_rewrites_one_line_on_a_terminal() -> None:
    stream = _Terminal()
    with progress.reporting(progress.Progress.on(stream)), progress.task("trials") as task:
        task.advance("a")
        task._shown = 0.0  # as if the refresh interval had passed
        task.advance("b")
    text = stream.getvalue()
    assert text.count("\r\033[K") >= 2 and text.endswith("\n")
    assert "nirc: trials 2 done" in text


def test_a_stage_line_counts_its_seconds_on_a_terminal_and_stays() -> None:
    stream = _Terminal()
    reporter = progress.Progress(stream, tty=True, tick_seconds=0.02)
    with progress.reporting(reporter):
        progress.message("compiling with Vela")
        time.sleep(0.2)
        progress.message("validating")
    text = stream.getvalue()
    assert "\rnirc: compiling with Vela... 0s" in text.replace("\033[K", "")
    lines = text.split("\n")
    assert lines[0].endswith("s") and lines[1].startswith("nirc: validating...") and lines[-1] == ""
    time.sleep(0.1)
    assert stream.getvalue() == text  # closed: the counter thread has stopped
