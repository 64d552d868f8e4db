"""Progress of the long stages: a counter on a terminal, plain lines in a log, nothing with ``-q``.

Why a context variable (like :mod:`nirc.timing`): what takes long is deep inside the pipeline
(a pass's Vela calls, the cost oracle) and must not grow a callback parameter on every
function on the way. The CLI installs a :class:`Progress` with :func:`reporting`; the pipeline
opens a :func:`task` per long stage and code below it calls :func:`tick` to show that work is
going on. Without an installed reporter every call is a no-op, so library users and tests
see nothing.

On a terminal the current task is one line rewritten in place (at most ten times a second);
otherwise a line is written when a task starts, then at most every ``interval`` seconds, and
when a task that printed progress lines ends, so a CI log shows liveness without a line per item.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO

_TTY_REFRESH = 0.1
_BAR = 20


@dataclass
class Progress:
    """Writes progress to ``stream`` (stderr in the CLI); ``tty`` selects the in-place counter.

    On a terminal a stage line (:meth:`message`) counts its seconds until the next output, from
    a daemon thread (a Vela compilation or the NPU simulation has no items to count); the line
    then stays with its final time. Call :meth:`close` when done (:func:`reporting` does).
    """

    stream: TextIO
    tty: bool = False
    interval: float = 5.0
    tick_seconds: float = 1.0
    _line: bool = field(default=False, repr=False)  # a counter line is on screen, without its newline
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event | None = field(default=None, repr=False)

    @classmethod
    def on(cls, stream: TextIO) -> Progress:
        isatty = getattr(stream, "isatty", None)
        return cls(stream, tty=bool(isatty and isatty()))

    def message(self, text: str) -> None:
        """A stage starts: one plain line (on a terminal, one that counts its seconds)."""
        with self._lock:
            self._end_line()
            if not self.tty:
                self.stream.write(f"nirc: {text}...\n")
                self.stream.flush()
                return
            self.stream.write(f"nirc: {text}...")
            self.stream.flush()
            self._line = True
            self._stop = threading.Event()
            threading.Thread(target=self._count, args=(text, self._stop), daemon=True).start()

    def _count(self, text: str, stop: threading.Event) -> None:
        start = time.perf_counter()
        while not stop.wait(self.tick_seconds):
            with self._lock:
                if stop.is_set():
                    return
                self.stream.write(f"\r\033[Knirc: {text}... {time.perf_counter() - start:.0f}s")
                self.stream.flush()

    def render(self, task: Task, final: bool = False) -> None:
        text = task.describe()
        with self._lock:
            if self._stop is not None:
                self._end_line()  # a stage line stays above the counter
            if self.tty:
                self.stream.write("\r\033[K" + text + ("\n" if final else ""))
                self._line = not final
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Stop the seconds counter and end the line on screen."""
        with self._lock:
            self._end_line()

    def _end_line(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = False


@dataclass
class Task:
    """A counted stage: ``done`` of ``total`` items (``total`` None: a plain counter) and a note."""

    label: str
    total: int | None
    progress: Progress | None
    done: int = 0
    note: str = ""
    ticks: dict[str, int] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    _shown: float = 0.0
    _lines: int = 0

    def describe(self) -> str:
        seconds = time.perf_counter() - self.start
        if self.total:
            filled = round(_BAR * min(self.done, self.total) / self.total)
            count = f"[{'#' * filled}{'.' * (_BAR - filled)}] {self.done}/{self.total}"
        else:
            count = str(self.done)
        extra = ", ".join(f"{k} {v}" for k, v in self.ticks.items())
        note = f" {self.note}" if self.note else ""
        return f"nirc: {self.label} {count}{note}{f' ({extra})' if extra else ''} {seconds:.0f}s"

    def begin(self, note: str) -> None:
        """Name the item now running (shown with the count of those done)."""
        self.note = note
        self.ticks.clear()
        self._show()

    def advance(self, note: str = "", n: int = 1) -> None:
        """``n`` more items done; ``note`` names the one now running."""
        self.done += n
        self.note = note
        self._show()

    def tick(self, what: str) -> None:
        """Sub-work inside the current item (a Vela call, a trial): shows the task is alive."""
        self.ticks[what] = self.ticks.get(what, 0) + 1
        self._show()

    def _show(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        wait = _TTY_REFRESH if self.progress.tty else self.progress.interval
        if force or now - self._shown >= wait:
            self._shown = now
            self._lines += 1
            self.progress.render(self)

    def close(self) -> None:
        if self.progress is not None and (self.progress.tty or self._lines > 1):
            self.note = "done"
            self.progress.render(self, final=True)


_CURRENT: ContextVar[Progress | None] = ContextVar("nirc_progress", default=None)
_TASK: ContextVar[Task | None] = ContextVar("nirc_progress_task", default=None)


@contextlib.contextmanager
def reporting(progress: Progress | None) -> Iterator[Progress | None]:
    """Install ``progress`` (None: quiet) for the calling context."""
    token = _CURRENT.set(progress)
    try:
        yield progress
    finally:
        _CURRENT.reset(token)
        if progress is not None:
            progress.close()


def message(text: str) -> None:
    """A plain stage line on the installed reporter, if any."""
    progress = _CURRENT.get()
    if progress is not None:
        progress.message(text)


@contextlib.contextmanager
def task(label: str, total: int | None = None) -> Iterator[Task]:
    """A counted stage; the innermost open task receives :func:`tick`."""
    progress = _CURRENT.get()
    current = Task(label, total, progress)
    token = _TASK.set(current)
    if progress is not None and not progress.tty:
        current._show(force=True)  # a log shows when the stage began
    try:
        yield current
    finally:
        _TASK.reset(token)
        current.close()


def tick(what: str) -> None:
    """Count one unit of sub-work on the innermost open task (no-op when none is open)."""
    current = _TASK.get()
    if current is not None:
        current.tick(what)
