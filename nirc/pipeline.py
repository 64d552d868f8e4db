"""The library entry point: load → passes → int8 TFLite → Vela → report, as ``nirc optimize`` runs it.

Embedding compilers call :func:`optimize` directly; the CLI is a thin shell over it.
Everything that can reject the input (model, ops, calibration data, pass names,
target) is checked before the expensive stages, and nothing reaches OUTDIR
unless every artifact was produced.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import onnx

from nirc import __version__
from nirc.accuracy import DEFAULT_MAX_SNR_DROP_DB, AccuracyGuard
from nirc.analysis import Analysis, analyze
from nirc.backend import SYNTHETIC_WARNING, CalibrationOptions, emit, load_samples, validate
from nirc.errors import PassError, TargetError, UnsupportedOperatorError
from nirc.html_report import render as render_html
from nirc.ir import IRModel
from nirc.outdir import staged_outdir
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager, PassRecord
from nirc.plugin import Registry, load_registry
from nirc.quant import CalibrationSet
from nirc.report import build_report, fits_summary, write_json
from nirc.target import Target
from nirc.tflite import check_supported, format_unsupported, unsupported_ops

logger = logging.getLogger(__name__)


ChannelRounding = Literal["off", "pad", "prune"]
NPU_CHECK_SAMPLES = 2
"""Inputs the compiled artifact is executed on: the functional model takes seconds per input."""


def select_passes(
    registry: Registry,
    target: Target,
    *,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    no_hw_passes: bool = False,
    channel_rounding: ChannelRounding = "pad",
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Pass]:
    """Explicit ``--passes`` win; otherwise the target's pipeline, minus skips.

    ``channel_rounding``: ``pad`` keeps the pipeline's exact ``pad-channels``; ``off``
    drops it; ``prune`` (lossy, opt-in) runs ``prune-channels`` before it.
    ``pass_options`` maps a pass name to keyword options of its constructor.
    """
    names = list(passes) if passes is not None else list(target.default_pipeline)
    if passes is None and channel_rounding == "prune" and not no_hw_passes:
        at = names.index("pad-channels") if "pad-channels" in names else len(names)
        names.insert(at, "prune-channels")
    if channel_rounding == "off":
        names = [n for n in names if n != "pad-channels"]
    for name in (*names, *skip, *(pass_options or {})):
        registry.get_pass(name)  # unknown names fail before any work
    if no_hw_passes:
        names = [n for n in names if n not in target.hw_passes]
    names = [n for n in names if n not in set(skip)]
    return [_construct(registry, name, (pass_options or {}).get(name, {})) for name in names]


def _construct(registry: Registry, name: str, options: Mapping[str, Any]) -> Pass:
    try:
        return registry.get_pass(name)(**options)
    except (TypeError, ValueError) as exc:
        raise PassError(f"pass {name}: bad options {dict(options)}: {exc}") from exc


@dataclass(frozen=True)
class OptimizeResult:
    """What :func:`optimize` produced, in memory and on disk.

    Attributes:
        outdir: where the artifacts were written.
        report: the report.json content.
        records: one per pass run.
        before, after: static analysis of the model before and after the passes.
        warnings: the report's warnings.
        model: the optimized float ONNX model.
        int8_tflite: the emitted int8 TFLite (what Vela compiles), as bytes.
        vela_tflite: the Vela-compiled TFLite as bytes, or None without compilation.
        artifacts: artifact name -> path in ``outdir``.
    """

    outdir: Path
    report: dict[str, Any]
    records: list[PassRecord]
    before: Analysis
    after: Analysis
    warnings: list[str] = field(default_factory=list)
    model: onnx.ModelProto | None = None
    int8_tflite: bytes = b""
    vela_tflite: bytes | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)


def lower_canonical(model: IRModel, target: Target, registry: Registry | None = None) -> IRModel:
    """A copy of ``model`` after the target's canonical (non-hardware) passes: what the emitter sees.

    Analyses that cost or place layers use it, since e.g. an unfolded BatchNormalization
    would cost more than the conv it folds into.
    """
    registry = registry or load_registry()
    lowered = model.copy()
    canonical = select_passes(registry, target, no_hw_passes=True)
    PassManager(canonical).run(lowered, PassContext(target=target))
    return lowered


def run_passes(
    model: IRModel,
    target: Target,
    pass_list: Sequence[Pass],
    *,
    verify: bool = False,
    dump_ir: Path | None = None,
    calibration: CalibrationSet | None = None,
    accuracy: AccuracyGuard | None = None,
) -> list[PassRecord]:
    manager = PassManager(pass_list, verify=verify, dump_ir=dump_ir)
    return manager.run(model, PassContext(target=target, calibration=calibration, accuracy=accuracy))


def accuracy_guard(
    calib: CalibrationSet, options: CalibrationOptions, enabled: bool | None, max_snr_drop: float
) -> AccuracyGuard | None:
    """The int8 guard of the hardware passes: on by default with real calibration data.

    Synthetic noise says nothing about the accuracy of a real input distribution, so without
    ``--calib`` the guard runs only when asked for (``enabled=True``).
    """
    if enabled is False or (enabled is None and calib.synthetic):
        return None
    return AccuracyGuard(calib, max_snr_drop=max_snr_drop, method=options.method, weights=options.weights,
        bias_correction=options.bias_correction,
    )


def optimize(
    source: str | Path | onnx.ModelProto,
    target: str | Target = "ethos-u65",
    *,
    outdir: Path | None = None,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    no_hw_passes: bool = False,
    channel_rounding: ChannelRounding = "pad",
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    verify: bool = False,
    dump_ir: Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    calibration: CalibrationOptions | None = None,
    io_dtype: Literal["int8", "float32"] = "int8",
    compile: bool = True,
    validate_npu: Literal["sim", "fvp", "none"] = "sim",
    require_fit: bool = True,
    accuracy: bool | None = None,
    max_snr_drop: float = DEFAULT_MAX_SNR_DROP_DB,
    layer_report: bool = True,
    registry: Registry | None = None,
    progress: Callable[[str], None] = lambda _message: None,
) -> OptimizeResult:
    """Compile ``source`` for ``target`` into ``outdir``.

    ``accuracy``: the hardware passes keep a rewrite only if the int8 SNR of every output stays
    within ``max_snr_drop`` dB of the model without it (None: on with ``--calib`` data, off with
    synthetic inputs). ``layer_report``: per-layer int8 SNR in the report.

    Raises:
        TargetError: with ``require_fit``, after writing every artifact, when the compiled
            model does not fit the target platform's memory (the report says by how much).
    """
    registry = registry or load_registry()
    tgt = registry.get_target(target) if isinstance(target, str) else target
    pass_list = select_passes(
        registry,
        tgt,
        passes=passes,
        skip=skip,
        no_hw_passes=no_hw_passes,
        channel_rounding=channel_rounding,
        pass_options=pass_options,
    )
    model = IRModel.load(source, input_shapes)
    label = model.label
    stem = Path(label).stem if label != "<model>" else "model"
    outdir = outdir or Path(f"{stem}_nirc")
    _check_ops_before_work(model.to_proto(), label, pass_list)
    calib = load_samples(model.to_proto(), calibration or CalibrationOptions())
    warnings = [SYNTHETIC_WARNING] if calib.synthetic else []

    before = analyze(model, tgt)
    original = model.to_proto()
    progress(f"running {len(pass_list)} passes")
    guard = accuracy_guard(calib, calibration or CalibrationOptions(), accuracy, max_snr_drop)
    records = run_passes(
        model, tgt, pass_list, verify=verify, dump_ir=dump_ir, calibration=calib, accuracy=guard
    )
    after = analyze(model, tgt)
    warnings.extend(_lossy_pass_warnings(records))
    layout_changes = _input_layout_changes(pass_list)
    if layout_changes:
        # The compiled model takes differently laid-out inputs: calibrate and validate with those.
        samples = list(calib.samples)
        for pass_ in pass_list:
            samples = [pass_.adapt_inputs(dict(sample)) for sample in samples]
        calib = replace(calib, samples=tuple(samples))
        feeds = "; ".join(str(change["feed"]) for change in layout_changes)
        warnings.append(f"the compiled model's inputs differ from the ONNX model's: {feeds}")
    try:
        proto = model.to_proto()
    except Exception as exc:  # a pass left the model invalid in a way the manager did not see
        raise PassError(f"final model is invalid: {exc}") from exc
    check_supported(proto, label)  # what the passes did not legalize, with attribute-level reasons

    options = calibration or CalibrationOptions()
    with staged_outdir(outdir) as staging:
        onnx.save(proto, str(staging / f"{stem}_opt.onnx"))
        progress(f"calibrating ({len(calib)} samples, {options.method}) and emitting int8 TFLite")
        emitted = emit(
            proto, dtype="int8", calib=calib, method=options.method, io_dtype=io_dtype, label=label,
            weights=options.weights, bias_correction=options.bias_correction,
        )
        int8_path = staging / f"{stem}_int8.tflite"
        int8_path.write_bytes(emitted.tflite.data)
        progress("validating int8 against float (LiteRT vs ONNX Runtime)")
        checks = validate(proto, emitted.tflite, calib)
        for check in checks:
            if check.low_snr:
                warnings.append(f"output '{check.name}' int8 SNR {check.snr_db:.1f} dB is low")
        validation: dict[str, Any] = {"samples": len(calib), "outputs": [c.to_json() for c in checks]}
        if layer_report:
            progress("measuring per-layer int8 error")
            validation["layers"] = _layer_section(proto, emitted.tflite, calib)
        if guard is not None:
            validation["accuracy_guard"] = guard.stats()
        if any(not r.exact and r.changed for r in records):
            # A lossy pass moved the float reference too: also measure against the input model.
            vs_original = validate(original, emitted.tflite, calib)
            validation["outputs_vs_original"] = [c.to_json() for c in vs_original]
        vela_json: dict[str, Any] | None = None
        fits: dict[str, Any] = fits_summary(tgt, after, None, None)
        if compile:
            progress(f"compiling with Vela for {tgt.name}")
            vela_json, fits = _compile(int8_path, tgt, staging, stem, after)
            if validate_npu != "none":
                from nirc.targets.ethos_u.npu_check import check_npu_artifact

                progress(f"executing the compiled NPU model ({validate_npu}) against the int8 TFLite")
                npu = check_npu_artifact(
                    validate_npu, tgt, staging / f"{stem}_vela.tflite", int8_path, emitted.tflite,
                    list(calib.samples[:NPU_CHECK_SAMPLES]), warnings,
                )
                validation["npu"] = npu
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
            validation=validation,
            vela=vela_json,
            fits=fits,
            warnings=warnings,
        )
        report["placement"] = _placement(int8_path, tgt, vela_json)
        report["input_layout_changes"] = layout_changes
        report["memory"], report["memory_timeline"] = _memory(model, tgt)
        write_json(staging / "report.json", report)
        (staging / "report.html").write_text(render_html(report), encoding="utf-8")
    if require_fit:
        check_fit(report, label, outdir)
    artifacts = {p.name: outdir / p.name for p in sorted(outdir.iterdir()) if p.is_file()}
    vela_path = outdir / f"{stem}_vela.tflite"
    return OptimizeResult(
        outdir,
        report,
        records,
        before,
        after,
        warnings,
        model=proto,
        int8_tflite=emitted.tflite.data,
        vela_tflite=vela_path.read_bytes() if compile else None,
        artifacts=artifacts,
    )


def check_fit(report: dict[str, Any], label: str, outdir: Path) -> None:
    """Raise TargetError when the report says the model does not fit its platform."""
    platform = report["fits"]["platform"]
    if platform["fits"] is False:
        raise TargetError(f"{label}: {platform['message']} (artifacts and report in {outdir})")


def _check_ops_before_work(proto: onnx.ModelProto, label: str, pass_list: Sequence[Pass]) -> None:
    """Reject ops nothing can lower before any work: neither the emitter nor a pass in the pipeline."""
    legalized = frozenset().union(*(type(p).legalizes for p in pass_list))
    left = Counter({op: n for op, n in unsupported_ops(proto).items() if op not in legalized})
    if left:
        raise UnsupportedOperatorError(f"{label}: {format_unsupported(left)}")


LAYER_SAMPLES = 4
"""Samples the per-layer comparison runs on: it keeps every intermediate tensor of the model."""


def _layer_section(proto: onnx.ModelProto, tflite: Any, calib: CalibrationSet) -> dict[str, Any]:
    """int8 SNR of every activation against the float model, and the layers where it falls most."""
    from nirc.accuracy import layer_errors, worst_steps

    errors = layer_errors(proto, tflite, list(calib.samples[:LAYER_SAMPLES]))
    return {
        "samples": min(LAYER_SAMPLES, len(calib)),
        "worst": worst_steps(proto, errors),
        "tensors": [e.to_json() for e in errors],
    }


def _placement(int8_path: Path, target: Target, vela: dict[str, Any] | None) -> dict[str, Any]:
    """Predicted (and, after Vela, observed) NPU/CPU placement with each CPU op's constraint and fix."""
    from nirc.targets.ethos_u.placement import placement_section

    section: dict[str, Any] = placement_section(int8_path, target, vela["cpu_op_list"] if vela else None)
    return section


def _memory(model: IRModel, target: Target) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Live activation bytes in the order Vela runs the graph, with 16-channel brick storage."""
    from nirc.memory import profile, vela_order

    prof = profile(model, vela_order(model))
    arena = target.arena_cache_bytes
    summary = {
        "peak_bytes": prof.peak,
        "peak_step": prof.order[prof.peak_step] if prof.order else None,
        "arena_bytes": arena,
        "over_arena_steps": len(prof.over(arena)) if arena else None,
    }
    timeline = [{"step": step, "live_bytes": live} for step, live in zip(prof.order, prof.live, strict=True)]
    return summary, timeline


def _input_layout_changes(pass_list: Sequence[Pass]) -> list[dict[str, Any]]:
    """Explicit input re-layouts made by passes (e.g. a stem space-to-depth), with how to feed them."""
    changes: list[dict[str, Any]] = []
    for pass_ in pass_list:
        for layout in getattr(pass_, "input_layouts", ()):
            changes.append({"pass": pass_.name, **layout.to_json()})
    return changes


def _lossy_pass_warnings(records: Sequence[PassRecord]) -> list[str]:
    """A lossy pass that changed the model is always worth a line in the summary."""
    found = []
    for record in records:
        if record.exact or not record.changed:
            continue
        found.append(f"lossy pass {record.name} changed the model; see its decisions in report.json")
        if record.stats.get("synthetic_calibration"):
            found.append(f"lossy pass {record.name} fitted weights on synthetic data: pass --calib")
    return found


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
