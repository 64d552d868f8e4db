"""The library entry point: load → passes → int8 TFLite → Vela → report, as ``nirc optimize`` runs it.

Embedding compilers call :func:`optimize` directly; the CLI is a thin shell over it.
Everything that can reject the input (model, ops, calibration data, pass names,
target) is checked before the expensive stages, and nothing reaches OUTDIR
unless every artifact was produced.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from nirc import __version__
from nirc.analysis import Analysis, analyze, live_bytes_timeline
from nirc.backend import SYNTHETIC_WARNING, CalibrationOptions, emit, load_samples, validate
from nirc.errors import PassError, TargetError
from nirc.html_report import render as render_html
from nirc.ir import IRModel
from nirc.outdir import staged_outdir
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager, PassRecord
from nirc.plugin import Registry, load_registry
from nirc.quant import CalibrationSet
from nirc.report import build_report, fits_summary, write_json
from nirc.target import Target
from nirc.tflite import check_supported

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
    report: dict[str, Any]
    records: list[PassRecord]
    before: Analysis
    after: Analysis
    warnings: list[str] = field(default_factory=list)


def run_passes(
    model: IRModel,
    target: Target,
    pass_list: Sequence[Pass],
    *,
    verify: bool = False,
    dump_ir: Path | None = None,
    calibration: CalibrationSet | None = None,
) -> list[PassRecord]:
    manager = PassManager(pass_list, verify=verify, dump_ir=dump_ir)
    return manager.run(model, PassContext(target=target, calibration=calibration))


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
    calibration: CalibrationOptions | None = None,
    io_dtype: Literal["int8", "float32"] = "int8",
    compile: bool = True,
    require_fit: bool = True,
    registry: Registry | None = None,
    progress: Callable[[str], None] = lambda _message: None,
) -> OptimizeResult:
    """Compile ``source`` for ``target`` into ``outdir``.

    Raises:
        TargetError: with ``require_fit``, after writing every artifact, when the compiled
            model does not fit the target platform's memory (the report says by how much).
    """
    registry = registry or load_registry()
    tgt = registry.get_target(target) if isinstance(target, str) else target
    pass_list = select_passes(registry, tgt, passes=passes, skip=skip, no_hw_passes=no_hw_passes)
    model = IRModel.load(source, input_shapes)
    label = model.label
    stem = Path(label).stem if label != "<model>" else "model"
    outdir = outdir or Path(f"{stem}_nirc")
    check_supported(model.to_proto(), label)
    calib = load_samples(model.to_proto(), calibration or CalibrationOptions())
    warnings = [SYNTHETIC_WARNING] if calib.synthetic else []

    before = analyze(model, tgt)
    progress(f"running {len(pass_list)} passes")
    records = run_passes(model, tgt, pass_list, verify=verify, dump_ir=dump_ir, calibration=calib)
    after = analyze(model, tgt)
    try:
        proto = model.to_proto()
    except Exception as exc:  # a pass left the model invalid in a way the manager did not see
        raise PassError(f"final model is invalid: {exc}") from exc

    options = calibration or CalibrationOptions()
    with staged_outdir(outdir) as staging:
        onnx.save(proto, str(staging / f"{stem}_opt.onnx"))
        progress(f"calibrating ({len(calib)} samples, {options.method}) and emitting int8 TFLite")
        emitted = emit(proto, dtype="int8", calib=calib, method=options.method, io_dtype=io_dtype, label=label)
        int8_path = staging / f"{stem}_int8.tflite"
        int8_path.write_bytes(emitted.tflite.data)
        progress("validating int8 against float (LiteRT vs ONNX Runtime)")
        checks = validate(proto, emitted.tflite, calib)
        for check in checks:
            if check.low_snr:
                warnings.append(f"output '{check.name}' int8 SNR {check.snr_db:.1f} dB is low")
        vela_json: dict[str, Any] | None = None
        fits: dict[str, Any] = fits_summary(tgt, after, None, None)
        if compile:
            progress(f"compiling with Vela for {tgt.name}")
            vela_json, fits = _compile(int8_path, tgt, staging, stem, after)
        report = build_report(
            source=label,
            target=tgt,
            records=records,
            before=before,
            after=after,
            version=__version__,
            calibration={
                "source": calib.source,
                "synthetic": calib.synthetic,
                "samples": len(calib),
                "method": options.method,
            },
            validation={"samples": len(calib), "outputs": [c.to_json() for c in checks]},
            vela=vela_json,
            fits=fits,
            warnings=warnings,
        )
        report["memory_timeline"] = [
            {"step": step, "live_bytes": live} for step, live in live_bytes_timeline(model)
        ]
        write_json(staging / "report.json", report)
        (staging / "report.html").write_text(render_html(report), encoding="utf-8")
    if require_fit:
        check_fit(report, label, outdir)
    return OptimizeResult(outdir, report, records, before, after, warnings)


def check_fit(report: dict[str, Any], label: str, outdir: Path) -> None:
    """Raise TargetError when the report says the model does not fit its platform."""
    platform = report["fits"]["platform"]
    if platform["fits"] is False:
        raise TargetError(f"{label}: {platform['message']} (artifacts and report in {outdir})")


def _compile(
    int8_path: Path, target: Target, staging: Path, stem: str, after: Analysis
) -> tuple[dict[str, Any], dict[str, Any]]:
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    vela_dir = staging / "vela"
    result = compile_with_vela(int8_path, target, vela_dir)
    final = staging / f"{stem}_vela.tflite"
    shutil.move(str(result.vela_tflite), final)
    # Vela prints its output path into the log; the staging name is random, so scrub it
    # to keep the artifacts byte-identical across runs.
    log = result.log_path.read_text(encoding="utf-8", errors="replace")
    result.log_path.write_text(log.replace(str(staging), "<outdir>"), encoding="utf-8")
    data = result.to_json()
    # Paths relative to OUTDIR: the staging directory is gone after the move.
    data["vela_tflite"] = final.name
    data["summary_csv"] = str(result.summary_csv.relative_to(staging))
    data["log"] = str(result.log_path.relative_to(staging))
    return data, fits_summary(target, after, result, final.stat().st_size)
