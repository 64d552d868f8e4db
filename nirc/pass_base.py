"""What a pass is: a named, exact-or-not rewrite of the IR that says whether it changed it.

Options are dataclass fields, so a pass instance is its full configuration and
can be printed, compared and recorded in the report.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from nirc.accuracy import AccuracyGuard
    from nirc.ir import IRModel
    from nirc.quant import CalibrationSet
    from nirc.target import Target

logger = logging.getLogger(__name__)


@dataclass
class PassContext:
    """What a pass may read besides the model, and where it reports counts.

    Attributes:
        target: the target being compiled for, or None for target-independent runs.
        calibration: representative inputs (a ``nirc.quant.CalibrationSet``) for passes
            that fit weights or measure accuracy (lossy passes); None when not available.
        stats: per-pass counters (``ctx.count("folded")``); the manager resets it
            before each pass and copies it into that pass's record.
        decisions: per-pass decision log (``ctx.decide({...})``): what was considered,
            what each candidate cost, what was chosen. Reset and recorded like ``stats``.
        accuracy: when set, passes with ``accuracy_guarded`` keep a rewrite only if the int8
            model's SNR on every output stays within its tolerance of the model without it
            (:class:`nirc.accuracy.AccuracyGuard`); None disables the check.
    """

    target: Target | None = None
    calibration: CalibrationSet | None = None
    stats: Counter[str] = field(default_factory=Counter)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    accuracy: AccuracyGuard | None = None

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n

    def decide(self, decision: dict[str, Any]) -> None:
        """Record one JSON-serialisable decision for the report."""
        self.decisions.append(decision)


class Pass(ABC):
    """Base of every pass, built-in or plugin.

    Subclasses set ``name`` (kebab-case, the CLI name), ``exact`` (True when the
    rewrite preserves the model's function up to float rounding; ``--verify``
    checks that claim) and a docstring whose first line is the description.
    """

    name: ClassVar[str]
    exact: ClassVar[bool]
    legalizes: ClassVar[frozenset[str]] = frozenset()
    """ONNX op types this pass rewrites away (e.g. LayerNormalization): a model holding them is
    not rejected as unsupported up front when the pass is in the pipeline."""
    accuracy_guarded: ClassVar[bool] = False
    """Exact in float but not necessarily in int8 (hardware rewrites): with ``ctx.accuracy`` set the
    pass manager reverts the pass when its int8 SNR loss exceeds the tolerance, unless the pass
    judges its own rewrites (``judges_accuracy``) and keeps only those within it."""
    judges_accuracy: ClassVar[bool] = False

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def is_exact(self) -> bool:
        """Whether this configured instance is exact; options may make a pass lossy (``allow_lossy``)."""
        return self.exact

    def adapt_inputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feed for the model after this pass, given one for the model before it.

        Identity unless the pass changed the model's input layout (an explicit, reported
        option such as a stem space-to-depth); verification and calibration go through it.
        """
        return feed

    @abstractmethod
    def run(self, model: IRModel, ctx: PassContext) -> bool:
        """Rewrite ``model.graph`` in place; return whether anything changed."""
