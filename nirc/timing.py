"""Where compile time and memory go: wall seconds and peak RSS per stage, plus counted events.

Why a context variable: the expensive events (a Vela compilation, an emission for the cost
oracle, a cache hit) happen deep inside passes and :mod:`nirc.cost`, which know nothing of
the pipeline that called them. :func:`recording` makes a :class:`Profile` current for the
calling context; :func:`count` and :func:`timed` add to it and do nothing when no profile is
recording (tests, library calls of the oracle alone). Concurrent ``optimize()`` calls in
threads each record into their own profile.

Peak RSS per stage: Linux keeps the process's high-water mark (``VmHWM``) and lets the
process reset it (``echo 5 > /proc/self/clear_refs``), so each stage reads its own peak
without a sampling thread. Where that is not possible the stage reports the process's peak
so far (``ru_maxrss``), which is still an upper bound.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Tally:
    """How often an event happened and the wall seconds it took in total."""

    count: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class StageTime:
    """One stage of a run: its wall seconds, the RSS peak reached during it, and its events."""

    name: str
    seconds: float
    peak_rss_bytes: int
    events: dict[str, Tally]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "events": {k: v.to_json() for k, v in sorted(self.events.items())},
        }


@dataclass(frozen=True)
class OracleCall:
    """One uncached cost-oracle compilation: who asked, how big the model was, emission and Vela seconds."""

    label: str
    nodes: int
    emit_seconds: float
    vela_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "nodes": self.nodes,
            "emit_seconds": round(self.emit_seconds, 3),
            "vela_seconds": round(self.vela_seconds, 3),
        }


MAX_CALLS = 500
"""Oracle calls kept one by one (a long search keeps its first ones; the event counters count all)."""


@dataclass
class Profile:
    """Stages in the order they ran, the events counted so far and the oracle's compilations."""

    stages: list[StageTime] = field(default_factory=list)
    events: dict[str, Tally] = field(default_factory=dict)
    calls: list[OracleCall] = field(default_factory=list)

    def add(self, event: str, seconds: float = 0.0, count: int = 1) -> None:
        tally = self.events.setdefault(event, Tally())
        tally.count += count
        tally.seconds += seconds

    def snapshot(self) -> dict[str, Tally]:
        """A copy of the counters, to subtract from a later one (see :func:`delta`)."""
        return {k: Tally(v.count, v.seconds) for k, v in self.events.items()}

    @property
    def peak_rss_bytes(self) -> int:
        return max((s.peak_rss_bytes for s in self.stages), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": [s.to_json() for s in self.stages],
            "events": {k: v.to_json() for k, v in sorted(self.events.items())},
            "seconds": round(sum(s.seconds for s in self.stages), 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "oracle_calls": [c.to_json() for c in self.calls],
        }


def delta(after: dict[str, Tally], before: dict[str, Tally]) -> dict[str, Tally]:
    """Events between two snapshots (only those that happened)."""
    out: dict[str, Tally] = {}
    for key, tally in after.items():
        old = before.get(key, Tally())
        if tally.count != old.count or tally.seconds != old.seconds:
            out[key] = Tally(tally.count - old.count, tally.seconds - old.seconds)
    return out


_CURRENT: ContextVar[Profile | None] = ContextVar("nirc_profile", default=None)


def current() -> Profile | None:
    """The profile recording in this context, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def recording(profile: Profile | None = None) -> Iterator[Profile]:
    """Make ``profile`` (a new one by default) the one events are counted into."""
    profile = profile if profile is not None else Profile()
    token = _CURRENT.set(profile)
    try:
        yield profile
    finally:
        _CURRENT.reset(token)


def count(event: str, seconds: float = 0.0, n: int = 1) -> None:
    """Count ``n`` occurrences of ``event`` that took ``seconds`` (no-op when nothing records)."""
    profile = _CURRENT.get()
    if profile is not None:
        profile.add(event, seconds, n)


def oracle_call(call: OracleCall) -> None:
    """Keep one oracle compilation (no-op when nothing records)."""
    profile = _CURRENT.get()
    if profile is not None and len(profile.calls) < MAX_CALLS:
        profile.calls.append(call)


@contextlib.contextmanager
def timed(event: str) -> Iterator[None]:
    """Count one ``event`` with the wall time of the ``with`` body (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        count(event, time.perf_counter() - start)


@contextlib.contextmanager
def stage(name: str, profile: Profile | None = None) -> Iterator[None]:
    """Record a stage of ``profile`` (default: the current one): seconds, peak RSS during it, its events."""
    profile = profile if profile is not None else _CURRENT.get()
    if profile is None:
        yield
        return
    reset_peak_rss()
    before = profile.snapshot()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        profile.stages.append(StageTime(name, seconds, peak_rss_bytes(), delta(profile.events, before)))


class Stages:
    """Consecutive stages of one run without nesting the code in ``with`` blocks: :meth:`next` ends
    the running stage and starts the next, :meth:`end` ends the last one."""

    def __init__(self, profile: Profile | None = None) -> None:
        self.profile = profile if profile is not None else current()
        self._running: contextlib.ExitStack | None = None

    def next(self, name: str) -> None:
        self.end()
        if self.profile is None:
            return
        self._running = contextlib.ExitStack()
        self._running.enter_context(stage(name, self.profile))

    def end(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_resettable = sys.platform.startswith("linux")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process; False where that is unsupported."""
    global _resettable
    if not _resettable:
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        _resettable = False
    return _resettable


def peak_rss_bytes() -> int:
    """The RSS high-water mark since the last reset (Linux), else the process's peak so far."""
    if _resettable:
        with contextlib.suppress(OSError, ValueError):
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
