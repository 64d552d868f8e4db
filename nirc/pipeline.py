"""The library entry point: load → passes → artifacts, as ``nirc optimize`` runs it.

Embedding compilers call :func:`optimize` directly; the CLI is a thin shell over it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from nirc import __version__
from nirc.analysis import Analysis, analyze
from nirc.errors import PassError
from nirc.ir import IRModel
from nirc.outdir import staged_outdir
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager, PassRecord
from nirc.plugin import Registry, load_registry
from nirc.report import build_report, write_json
from nirc.target import Target

logger = logging.getLogger(__name__)


def select_passes(
    registry: Registry,
    target: Target,
    *,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    no_hw_passes: bool = False,
) -> list[Pass]:
    """Explicit ``--passes`` win; otherwise the target's pipeline, minus skips."""
    names = list(passes) if passes is not None else list(target.default_pipeline)
    for name in (*names, *skip):
        registry.get_pass(name)  # unknown names fail before any work
    if no_hw_passes:
        names = [n for n in names if n not in target.hw_passes]
    names = [n for n in names if n not in set(skip)]
    return [registry.get_pass(name)() for name in names]


@dataclass(frozen=True)
class OptimizeResult:
    outdir: Path
    report: dict[str, object]
    records: list[PassRecord]
    before: Analysis
    after: Analysis


def run_passes(
    model: IRModel,
    target: Target,
    pass_list: Sequence[Pass],
    *,
    verify: bool = False,
    dump_ir: Path | None = None,
) -> list[PassRecord]:
    manager = PassManager(pass_list, verify=verify, dump_ir=dump_ir)
    return manager.run(model, PassContext(target=target))


def optimize(
    source: str | Path | onnx.ModelProto,
    target: str | Target = "ethos-u65",
    *,
    outdir: Path | None = None,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    no_hw_passes: bool = False,
    verify: bool = False,
    dump_ir: Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    registry: Registry | None = None,
) -> OptimizeResult:
    registry = registry or load_registry()
    tgt = registry.get_target(target) if isinstance(target, str) else target
    pass_list = select_passes(registry, tgt, passes=passes, skip=skip, no_hw_passes=no_hw_passes)
    model = IRModel.load(source, input_shapes)
    stem = Path(model.label).stem if model.label != "<model>" else "model"
    outdir = outdir or Path(f"{stem}_nirc")
    before = analyze(model, tgt)
    records = run_passes(model, tgt, pass_list, verify=verify, dump_ir=dump_ir)
    after = analyze(model, tgt)
    report = build_report(
        source=model.label, target=tgt, records=records, before=before, after=after, version=__version__
    )
    try:
        proto = model.to_proto()
    except Exception as exc:  # a pass left the model invalid in a way the manager did not see
        raise PassError(f"final model is invalid: {exc}") from exc
    with staged_outdir(outdir) as staging:
        onnx.save(proto, str(staging / f"{stem}_opt.onnx"))
        write_json(staging / "report.json", report)
    return OptimizeResult(outdir, report, records, before, after)
