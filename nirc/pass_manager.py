"""Runs a pipeline of passes, checking the IR between them.

Between passes the manager: validates the model with the ONNX checker (a pass
that breaks the model is named, not discovered three passes later), optionally
dumps the IR, and with ``verify`` re-runs the model in ONNX Runtime after every
exact pass to hold it to its claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from nirc import progress, timing
from nirc import verify as numeric
from nirc.errors import ModelLoadError, NircError, PassError, VerificationError
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassRecord:
    """One line of the report's ``passes`` list."""

    name: str
    exact: bool
    changed: bool
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    verified: bool = False
    decisions: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, timing.Tally] = field(default_factory=dict, compare=False)
    """Events during the pass (Vela calls, cache hits, int8 measurements); varies between runs, so
    it goes to the report's ``profile`` section, not to :meth:`to_json`."""

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "exact": self.exact,
            "changed": self.changed,
            "seconds": round(self.seconds, 4),
            "stats": dict(sorted(self.stats.items())),
            "verified": self.verified,
            "decisions": self.decisions,
        }


@dataclass
class PassManager:
    """Run ``passes`` in order.

    Attributes:
        verify: compare ORT outputs before/after each exact pass that changed the model.
        verify_inputs: how many seeded random inputs the comparison uses.
        dump_ir: directory to write ``NN_<pass>.onnx`` after each pass (``00_input.onnx`` first).
    """

    passes: Sequence[Pass]
    verify: bool = False
    verify_inputs: int = 3
    rtol: float = 1e-4
    atol: float = 1e-5
    dump_ir: Path | None = None

    def run(self, model: IRModel, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        if self.dump_ir is not None:
            self.dump_ir.mkdir(parents=True, exist_ok=True)
            model.save(self.dump_ir / "00_input.onnx")
        # The model after one pass is the model before the next: export and run it once.
        state = _Snapshot(model.to_proto(check=False) if self.verify else None)
        with progress.task("passes", total=len(self.passes)) as task:
            for index, pass_ in enumerate(self.passes, start=1):
                task.begin(pass_.name)
                records.append(self._profiled(pass_, model, ctx, state))
                task.advance()
                if self.dump_ir is not None:
                    model.save(self.dump_ir / f"{index:02d}_{pass_.name}.onnx")
        return records

    def _profiled(self, pass_: Pass, model: IRModel, ctx: PassContext, state: _Snapshot) -> PassRecord:
        """:meth:`_run_one` with the events it caused, int8 guard measurements included."""
        profile = timing.current()
        before = profile.snapshot() if profile is not None else {}
        guard = ctx.accuracy
        measured = (guard.measurements, guard.seconds) if guard is not None else (0, 0.0)
        record = self._run_one(pass_, model, ctx, state)
        events = timing.delta(profile.snapshot(), before) if profile is not None else {}
        if guard is not None and guard.measurements > measured[0]:
            tally = timing.Tally(guard.measurements - measured[0], guard.seconds - measured[1])
            events["accuracy_guard"] = tally
            if profile is not None:
                profile.add("accuracy_guard", tally.seconds, tally.count)
        return replace(record, profile=events)

    def _run_one(self, pass_: Pass, model: IRModel, ctx: PassContext, state: _Snapshot) -> PassRecord:
        ctx.stats.clear()
        ctx.decisions = []
        start = time.perf_counter()
        guarded = ctx.accuracy is not None and pass_.accuracy_guarded and not pass_.judges_accuracy
        previous = model.to_proto(check=False) if guarded else None
        try:
            changed = bool(pass_.run(model, ctx))
            if changed and previous is not None:
                changed = _keep_if_accurate(pass_, model, ctx, previous)
            if changed and ctx.accuracy is not None:
                ctx.accuracy.follow(pass_)  # later passes see the inputs this one re-laid out
        except NircError as exc:
            raise PassError(f"pass {pass_.name}: {exc}") from exc
        except Exception as exc:
            raise PassError(f"pass {pass_.name} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        if not changed and not self.verify:
            logger.info("pass %s: unchanged in %.3fs", pass_.name, seconds)
            return PassRecord(pass_.name, pass_.is_exact, False, seconds, dict(ctx.stats), False, ctx.decisions)
        try:
            after = model.to_proto(check=True)
        except ModelLoadError as exc:
            raise PassError(f"pass {pass_.name} produced an invalid model: {exc}") from exc
        verified = False
        if self.verify and changed:
            if pass_.is_exact and state.proto is not None:
                verified = self._verify(pass_, state, after)
            else:
                state.outputs = None  # an inexact pass moved the reference
                if state.feeds is not None:
                    state.feeds = [pass_.adapt_inputs(feed) for feed in state.feeds]
            state.proto = after
        logger.info("pass %s: changed=%s in %.3fs %s", pass_.name, changed, seconds, dict(ctx.stats))
        return PassRecord(pass_.name, pass_.is_exact, changed, seconds, dict(ctx.stats), verified, ctx.decisions)

    def _verify(self, pass_: Pass, state: _Snapshot, after: onnx.ModelProto) -> bool:
        assert state.proto is not None
        if state.feeds is None:
            state.feeds = numeric.random_inputs(state.proto, self.verify_inputs)
        if state.outputs is None:
            state.outputs = numeric.run_onnx(state.proto, state.feeds)
        # A pass that re-lays out an input (an explicit option) says how to feed its result.
        state.feeds = [pass_.adapt_inputs(feed) for feed in state.feeds]
        new_outputs = numeric.run_onnx(after, state.feeds)
        mismatch = numeric.compare_outputs(
            state.proto, after, state.feeds, rtol=self.rtol, atol=self.atol,
            reference=state.outputs, produced=new_outputs,
        )
        if mismatch is not None:
            raise VerificationError(
                f"pass {pass_.name} claims to be exact but changed the model's function: {mismatch}"
            )
        # Compare each pass with its predecessor, not with the input: errors must not
        # accumulate silently across passes, and each pass answers only for itself.
        state.outputs = new_outputs
        return True


def _keep_if_accurate(pass_: Pass, model: IRModel, ctx: PassContext, previous: onnx.ModelProto) -> bool:
    """Whole-pass int8 check: revert the pass when it costs more SNR than the guard allows.

    One measurement per guarded pass (the model before it is usually cached from the pass
    before); passes that can drop single rewrites judge themselves (``judges_accuracy``).
    """
    guard = ctx.accuracy
    assert guard is not None
    feeds = [pass_.adapt_inputs(dict(s)) for s in guard.calibration.samples]
    verdict = guard.judge(previous, model.to_proto(check=False), feeds)
    kept = verdict.ok
    cycles = {k: v for k, v in ctx.stats.items() if "cycles" in k}  # the pass's own speed claim, if it has one
    ctx.decide({"pass": pass_.name, "accuracy_guard": {**verdict.to_json(), "kept": kept, **cycles}})
    ctx.count("accuracy_guard.kept" if kept else "accuracy_guard.reverted")
    if not kept:
        logger.warning(
            "pass %s reverted: int8 SNR drops %.2f dB > %.2f dB", pass_.name, verdict.drop, verdict.max_drop
        )
        model.graph = IRModel.from_proto(previous, model.label).graph
    return kept


@dataclass
class _Snapshot:
    """The verified model between passes, its seeded inputs and their outputs."""

    proto: onnx.ModelProto | None
    feeds: list[dict[str, np.ndarray]] | None = None
    outputs: list[list[np.ndarray]] | None = None
