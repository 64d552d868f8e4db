"""The ``nirc`` command.

Exit codes: 0 success; 1 generic error; 2 bad input model, calibration data or
usage; 3 unsupported operator; 4 unknown target or model does not fit; 5 pass
error or unknown pass; 6 ``--verify`` caught an inexact "exact" pass; 7 plugin
error; 8 backend (emission/Vela) error; 9 NPU validation failed (the compiled
artifact differs from its int8 TFLite without a known reason, or its command
stream cannot be executed); 70 internal error (a bug: rerun with ``--debug`` and
report the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nirc import __version__
from nirc.analysis import Analysis, analyze, with_layer_costs
from nirc.compress import cli as compress_cli
from nirc.cost import cli as cost_cli
from nirc.errors import NircError
from nirc.ir import IRModel
from nirc.options import (
    DEFAULT_MAX_SNR_DROP_DB,
    DEFAULT_TARGET,
    DEFAULT_TARGET_TEXT,
    TARGET_HELP,
    CalibrationOptions,
    OptimizeOptions,
)
from nirc.plugin import Registry, load_registry
from nirc.search import cli as search_cli
from nirc.target import Target

EXIT_INTERNAL = 70

if TYPE_CHECKING:
    from nirc.passes.pad_channels import LayerAlignment


def _parse_input_shapes(values: Sequence[str]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        if not sep:
            name, dims = "", value
        try:
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",") if d]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--input-shape expects NAME=1,3,224,224, got '{value}'"
            ) from None
    return shapes


def _resolve_unnamed_shape(shapes: dict[str, list[int]], model_path: str) -> dict[str, list[int]]:
    """``--input-shape 1,3,224,224`` without a name applies to a single-input model."""
    if "" not in shapes:
        return shapes
    import onnx

    from nirc.ir.load import read_model

    proto, label = read_model(model_path)
    inits = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    if len(names) != 1:
        raise NircError(f"{label}: --input-shape without a name needs a single-input model, inputs: {names}")
    shapes[names[0]] = shapes.pop("")
    del onnx
    return shapes


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--target", default=DEFAULT_TARGET, help=TARGET_HELP)
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="fix an input's dynamic dims (repeatable; static dims must keep their size); "
        "required when the model has dynamic dims",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'")
    return value


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", type=Path, metavar="PATH", help=".npy, .npz (by input name) or a folder of images")
    p.add_argument("--calib-mean", type=_floats, metavar="M0,M1,M2", help="per-channel mean for image folders")
    p.add_argument("--calib-std", type=_floats, metavar="S0,S1,S2", help="per-channel std for image folders")
    p.add_argument(
        "--calib-method",
        choices=("minmax", "percentile", "mse"),
        default="minmax",
        help="how int8 activation ranges are chosen from the calibration data: minmax (default; the "
        "observed range), percentile (clips rare outliers), mse (minimises quantization error)",
    )
    p.add_argument("--calib-count", type=int, default=16, help="use at most this many samples")
    p.add_argument(
        "--weight-range",
        choices=("max", "mse", "adaround"),
        default="max",
        help="per-channel int8 weight ranges: max|w| (default), clipped where that lowers the weights' MSE, "
        "or max|w| with each weight rounded up or down to keep the layer's output on --calib data (AdaRound)",
    )
    p.add_argument(
        "--bias-correction",
        action="store_true",
        help="fold each Conv/Gemm's mean int8 weight-rounding error (on --calib data) into its bias",
    )


def _calibration(args: argparse.Namespace) -> CalibrationOptions:
    return CalibrationOptions(
        path=args.calib, mean=args.calib_mean, std=args.calib_std, method=args.calib_method, count=args.calib_count,
        weights=args.weight_range,
        bias_correction=args.bias_correction,
    )


EXIT_CODES_TEXT = (
    "Exit codes: 0 ok, 1 error, 2 bad model/input/output location/usage, 3 unsupported operator, "
    "4 unknown target or model does not fit, 5 pass error, 6 --verify failure, 7 plugin error, "
    f"8 backend (emission/Vela) error, 9 NPU validation failed, {compress_cli.EXIT_TEXT}, 70 internal error, "
    "128+N killed by signal N (130 Ctrl-C, 143 SIGTERM)."
)


def _global_options(default: Any) -> argparse.ArgumentParser:
    """Options valid on both sides of the subcommand (``nirc -q optimize`` = ``nirc optimize ... -q``).

    The subcommands' copies default to SUPPRESS so that they only set what was given after
    the subcommand and do not reset what was given before it.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks and debug logging"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print nothing but errors and requested data"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nirc",
        description="Hardware-aware compiler for Arm Ethos-U NPUs.",
        parents=[_global_options(False)],
        epilog=f"Default target: {DEFAULT_TARGET_TEXT}. {EXIT_CODES_TEXT}",
    )
    parser.add_argument("--version", action="version", version=f"nirc {__version__}")
    sub = _SubcommandAdder(parser.add_subparsers(dest="command", required=True), _global_options(argparse.SUPPRESS))

    p = sub.add_parser("analyze", help="MACs, parameters, activation memory and channel alignment per layer")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-cycles", action="store_true", help="skip Vela's per-layer cycles (static counts only)")
    p.add_argument(
        "--alignment",
        action="store_true",
        help="cost what padding / trimming each misaligned channel group would change (2 Vela runs per group)",
    )
    p.add_argument("--align", type=int, help="alignment for --alignment (default: the target's brick)")
    p.add_argument(
        "--placement",
        action="store_true",
        help="predict which ops Vela places on the CPU, with the constraint and the rewrite that fixes it",
    )

    p = sub.add_parser("optimize", help="run the target's pipeline and write artifacts + report.json")
    _add_model_args(p)
    p.add_argument("-o", "--outdir", type=Path, help="output directory (default: ./<model>_nirc)")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also print where compile time and memory went (on stderr)"
    )
    p.add_argument("--passes", help="comma-separated pass list instead of the target's pipeline")
    p.add_argument("--skip-pass", action="append", default=[], metavar="NAME", help="drop a pass")
    p.add_argument("--no-hw-passes", action="store_true", help="drop hardware-aware passes (baseline)")
    p.add_argument(
        "--channel-rounding",
        choices=("off", "pad", "prune"),
        default="pad",
        help="pad: zero-pad channels to the brick where Vela says it helps (exact, default); "
        "prune: round down with least-squares refit (lossy); off: neither",
    )
    p.add_argument("--align", type=int, help="channel alignment for pad/prune (default: the target's brick)")
    p.add_argument("--prune-ratio", type=float, help="with --channel-rounding prune: also cut this share of channels")
    p.add_argument("--prune-criterion", choices=("l2", "geometric-median"), help="which channels prune removes")
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help="let substitute-blocks use lossy rules (fitted on --calib; the accuracy cost is reported)",
    )
    p.add_argument("--max-error", type=float, help="with --allow-lossy: reject replacements above this output error")
    p.add_argument(
        "--stem",
        choices=("none", "pad-channels", "space-to-depth", "auto"),
        default="none",
        help="re-lay out the model input for a faster first conv (changes the input you feed; reported)",
    )
    p.add_argument(
        "--arena-size",
        type=int,
        metavar="BYTES",
        help="activation budget: tile until the peak fits or fail naming the op (default: speed only)",
    )
    p.add_argument(
        "--pass-option",
        action="append",
        default=[],
        metavar="PASS.KEY=VALUE",
        help="set a pass option, e.g. tile-activations.max_trials=40 (repeatable)",
    )
    p.add_argument(
        "--max-snr-drop",
        type=float,
        metavar="DB",
        help="hardware passes keep a rewrite only if int8 SNR drops at most DB on every output "
        "(default 0.5 with --calib data; giving it also guards synthetic-data runs)",
    )
    p.add_argument(
        "--no-accuracy-guard", action="store_true", help="keep hardware rewrites whatever they cost in int8 SNR"
    )
    p.add_argument(
        "--activations-16",
        action="append",
        default=[],
        metavar="auto|TENSOR[,..]",
        help="int16 activations (16x8 on the NPU) for these layers, or auto: the worst layers by per-layer "
        "SNR drop until --min-snr or --act16-max-cost; opt-in, reported per layer",
    )
    p.add_argument("--min-snr", type=float, metavar="DB", help="auto 16-bit activations' target on every output")
    p.add_argument(
        "--act16-max-cost", type=float, metavar="PCT", help="auto 16-bit activations: max Vela latency increase"
    )
    p.add_argument("--verify", action="store_true", help="check every exact pass numerically with ORT")
    p.add_argument("--dump-ir", type=Path, metavar="DIR", help="write the ONNX after each pass")
    _add_calib_args(p)
    p.add_argument("--io", choices=("int8", "float32"), default="int8", help="model input/output type")
    p.add_argument("--no-compile", action="store_true", help="stop after the int8 TFLite (skip Vela)")
    p.add_argument(
        "--validate",
        choices=("sim", "fvp", "none"),
        default="sim",
        help="execute Vela's output: in nirc's NPU functional model (default), on a Corstone FVP "
        "(falls back to sim when none is installed), or not at all",
    )
    p.add_argument(
        "--npu-samples", type=_positive, default=8, metavar="N", help="inputs --validate executes (default 8)"
    )
    p.add_argument(
        "--npu-format",
        choices=("tflite", "tosa", "auto"),
        default="auto",
        help="what Vela reads: the int8 TFLite, or it lifted to TOSA 1.0, where SiLU and other one-input "
        "functions are one TABLE (needs tosa-tools; ops it cannot lift, and all they feed, stay TFLite); "
        "auto (default): both forms compiled, the one Vela estimates faster kept (the report says why)",
    )
    p.add_argument("--json", action="store_true", help="print report.json to stdout instead of the summary")

    p = sub.add_parser("convert", help="emit TFLite (float32 or int8) without Vela")
    _add_model_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output .tflite file")
    p.add_argument(
        "--dtype",
        choices=("float32", "int8"),
        default="int8",
        help="int8 (default: calibrated, what Vela compiles) or float32 (no calibration; runs on the CPU only)",
    )
    p.add_argument("--io", choices=("int8", "float32"), default="int8", help="int8 model input/output type")
    _add_calib_args(p)

    for name, text in cost_cli.COMMANDS.items():
        cost_cli.add_arguments(sub.add_parser(name, help=text), name)
    compress_cli.add_arguments(sub.add_parser(compress_cli.COMMAND, help=compress_cli.HELP))

    search_cli.add_arguments(sub.add_parser("search", help=search_cli.HELP))

    p = sub.add_parser("validate", help="execute a Vela-compiled model and compare it with its int8 TFLite")
    p.add_argument("vela_tflite", type=Path, help="MODEL_vela.tflite")
    p.add_argument(
        "int8_tflite", type=Path, help="the MODEL_int8.tflite Vela compiled (MODEL_npu.tosa for a TOSA-form artifact)"
    )
    p.add_argument(
        "--method",
        choices=("sim", "fvp"),
        default="sim",
        help="sim (default): nirc's NPU functional model; fvp: a Corstone FVP (needs one installed)",
    )
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"for --method fvp: which FVP to use; {TARGET_HELP}")
    p.add_argument("--samples", type=_positive, default=8, help="random inputs to compare on (default 8)")
    p.add_argument(
        "--reference",
        choices=("micro", "litert"),
        default="micro",
        help="micro (default): TFLite Micro's reference kernels; litert: LiteRT's, as a second opinion (its "
        "differences that TFLite Micro lacks are reported as known, by op)",
    )
    p.add_argument("--describe", action="store_true", help="print the decoded NPU command stream and stop")

    p = sub.add_parser("passes", help="the default pipeline in run order, then every registered pass")
    p.add_argument("--target", default=DEFAULT_TARGET, help=TARGET_HELP)
    sub.add_parser("targets", help="list registered targets")
    return parser


class _SubcommandAdder:
    """``add_parser`` that gives every subcommand the global options."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser) -> None:
        self._sub = sub
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._sub.add_parser(name, parents=[self._common], **kwargs)
        return parser


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def print_analysis(analysis: Analysis, out: TextIO | None = None) -> None:
    rows = [("layer", "op", "output", "MACs", "params", "act bytes", "cycles", "MAC util", "misaligned ch")]
    for layer in analysis.layers:
        rows.append(
            (
                layer.name,
                layer.op,
                "x".join(map(str, layer.output_shape)),
                _fmt_int(layer.macs),
                _fmt_int(layer.params),
                _fmt_int(layer.activation_bytes),
                _fmt_int(layer.cycles) if layer.cycles is not None else "",
                f"{layer.mac_util:.1%}" if layer.mac_util is not None and layer.macs else "",
                ",".join(map(str, layer.misaligned_channels)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    write = (out or sys.stdout).write
    for i, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if j < 3 or j == 8 else c.rjust(w) for j, (c, w) in pairs]
        write("  ".join(cells).rstrip() + "\n")
        if i == 0:
            write("  ".join("-" * w for w in widths) + "\n")
    arena = f" (arena {analysis.arena_bytes:,} B)" if analysis.arena_bytes else ""
    write(
        f"\nMACs {analysis.macs:,}   params {analysis.params:,}   weight bytes (int8) {analysis.weight_bytes:,}\n"
        f"peak live activations (int8) {analysis.peak_activation_bytes:,} B at {analysis.peak_step}{arena}\n"
    )
    if analysis.cycles_total is not None:
        write(f"Vela estimate: {analysis.cycles_total:,} cycles on {analysis.target}\n")
    for note in analysis.notes:
        write(f"note: {note}\n")
    misaligned = sum(1 for layer in analysis.layers if layer.misaligned_channels)
    if analysis.brick_channels and misaligned:
        write(f"{misaligned} layers have channel counts not a multiple of {analysis.brick_channels}\n")


def _cmd_analyze(args: argparse.Namespace, registry: Registry) -> int:
    target = registry.get_target(args.target)
    shapes = _resolve_unnamed_shape(_parse_input_shapes(args.input_shape), args.model)
    model = IRModel.load(args.model, shapes)
    analysis = analyze(model, target)
    if not args.no_cycles:
        analysis = with_layer_costs(analysis, model, target)
    alignment = _alignment_rows(model, target, args.align) if args.alignment else None
    placement = _placement(model, target) if args.placement else None
    if args.json:
        data = analysis.to_json()
        if alignment is not None:
            data["alignment"] = [row.to_json() for row in alignment]
        if placement is not None:
            data["placement"] = placement
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
    else:
        print_analysis(analysis)
        if alignment is not None:
            print_alignment(alignment)
        if placement is not None:
            print_placement(placement)
    return 0


def _placement(model: IRModel, target: Target) -> dict[str, Any]:
    """Placement of the model as nirc lowers it (canonical passes, int8 emission), predicted without compiling."""
    from nirc.targets.ethos_u.placement import model_placement, placement_section

    data, _ = model_placement(_lowered(model, target).to_proto(), target)
    section: dict[str, Any] = placement_section(data, target)
    return section


def print_placement(section: dict[str, Any]) -> None:
    predicted = section["predicted"]
    sys.stdout.write(
        f"\nplacement ({section['architecture']}): {predicted['npu_ops']} of {predicted['ops']} TFLite ops on the NPU\n"
    )
    for entry in section["cpu_ops"]:
        fix = f"; fix: {entry['fix']}" if entry.get("fix") else ""
        sys.stdout.write(f"  CPU: {entry['op']} ({entry['op_type']}): {entry['constraint']}{fix}\n")


def _alignment_rows(model: IRModel, target: Target, align: int | None) -> list[LayerAlignment]:
    """Channel alignment of the model as nirc lowers it (after the canonical passes)."""
    from nirc.passes.pad_channels import channel_alignment

    rows: list[LayerAlignment] = channel_alignment(_lowered(model, target), target, align=align)
    return rows


def _lowered(model: IRModel, target: Target) -> IRModel:
    from nirc.lowering import lower_canonical

    return lower_canonical(model, target)


def print_alignment(rows: Sequence[LayerAlignment]) -> None:
    write = sys.stdout.write
    misaligned = [r for r in rows if r.out_brick_gap or r.in_brick_gap]
    write(f"\nchannel alignment: {len(misaligned)} of {len(rows)} Conv/Gemm layers leave bricks partly empty\n")
    seen: set[str | None] = set()
    for r in misaligned:
        costs = ""
        if r.space not in seen and r.pad_cycles_delta is not None:
            costs = f"; pad to {r.pad_to}: {r.pad_cycles_delta:+,} cycles"
            if r.trim_cycles_delta is not None:
                costs += f", trim to the brick below: {r.trim_cycles_delta:+,} cycles"
        seen.add(r.space)
        write(
            f"  {r.name} ({r.op}) channels {r.in_channels}->{r.out_channels}, empty in last brick "
            f"in/out {r.in_brick_gap}/{r.out_brick_gap}: {r.note}{costs}\n"
        )


def _option_value(raw: str) -> Any:
    """Pass option values from the command line: JSON when it parses (numbers, true, lists), else a string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _pass_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """CLI flags that configure individual passes, as constructor options per pass name."""
    options: dict[str, dict[str, Any]] = {}
    if args.align is not None:
        options.setdefault("pad-channels", {})["align"] = args.align
    prune: dict[str, Any] = {}
    if args.align is not None:
        prune["align"] = args.align
    if args.prune_ratio is not None:
        prune["ratio"] = args.prune_ratio
    if args.prune_criterion is not None:
        prune["criterion"] = args.prune_criterion
    if args.arena_size is not None:
        options.setdefault("tile-activations", {})["arena_size"] = args.arena_size
    for item in args.pass_option:
        key, sep, raw = item.partition("=")
        name, dot, option = key.rpartition(".")
        if not (sep and dot and name and option):
            raise argparse.ArgumentTypeError(f"--pass-option expects PASS.KEY=VALUE, got '{item}'")
        options.setdefault(name, {})[option] = _option_value(raw)
    blocks: dict[str, Any] = {}
    if args.allow_lossy:
        blocks["allow_lossy"] = True
    if args.max_error is not None:
        blocks["max_error"] = args.max_error
    if args.stem != "none":
        blocks["stem"] = args.stem
    if blocks:
        options.setdefault("substitute-blocks", {}).update(blocks)
    if prune:
        if args.channel_rounding != "prune" and set(prune) != {"align"}:
            raise argparse.ArgumentTypeError("--prune-ratio/--prune-criterion need --channel-rounding prune")
        if args.channel_rounding == "prune":
            options.setdefault("prune-channels", {}).update(prune)
    return options


def optimize_options(args: argparse.Namespace) -> OptimizeOptions:
    """The command line as the library's options object: the CLI adds nothing the API lacks."""
    shapes = _resolve_unnamed_shape(_parse_input_shapes(args.input_shape), args.model)
    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip()) if args.passes else None
    return OptimizeOptions(
        target=args.target,
        passes=passes,
        skip=tuple(args.skip_pass),
        no_hw_passes=args.no_hw_passes,
        channel_rounding=args.channel_rounding,
        pass_options=_pass_options(args),
        verify=args.verify,
        dump_ir=args.dump_ir,
        input_shapes=shapes,
        calibration=_calibration(args),
        io_dtype=args.io,
        compile=not args.no_compile,
        validate_npu=args.validate,
        npu_samples=args.npu_samples,
        npu_format=args.npu_format,
        require_fit=False,  # show the summary first, then fail
        accuracy=False if args.no_accuracy_guard else (True if args.max_snr_drop is not None else None),
        max_snr_drop=args.max_snr_drop if args.max_snr_drop is not None else DEFAULT_MAX_SNR_DROP_DB,
        activations_16=tuple(args.activations_16),
        min_snr=args.min_snr,
        act16_max_cost=args.act16_max_cost,
    )


def _cmd_optimize(args: argparse.Namespace, registry: Registry) -> int:
    from nirc import progress
    from nirc.pipeline import check_fit, optimize

    outdir: Path = args.outdir or Path(f"{Path(args.model).stem}_nirc")
    reporter = None if args.quiet or args.json else progress.Progress.on(sys.stderr)
    with progress.reporting(reporter):
        result = optimize(
            args.model,
            options=optimize_options(args),
            outdir=outdir,
            registry=registry,
            progress=reporter.message if reporter is not None else lambda _message: None,
        )
    if args.json:
        sys.stdout.write(json.dumps(result.report, indent=2) + "\n")
    elif not args.quiet:
        print_optimize_summary(result.report, outdir)
    if args.verbose:
        from nirc.report import format_profile

        sys.stderr.write(format_profile(result.report["profile"]))
    check_fit(result.report, args.model, outdir)
    _check_npu(result.report, outdir)
    return 0


def _check_npu(report: dict[str, Any], outdir: Path) -> None:
    """Zero tolerance: an unexplained difference of the compiled artifact fails the run (exit 9), after the summary."""
    from nirc.errors import NpuValidationError

    npu = report["validation"].get("npu") or {}
    if "bit_exact" in npu and not npu["bit_exact"] and npu.get("unexplained", True):
        reference = "the TOSA reference model" if npu.get("reference") == "tosa" else "the int8 TFLite"
        where = npu.get("first_divergence") or "see validation.npu in the report"
        lsb = npu.get("max_abs_diff_lsb")
        lsb_text = f"{lsb:g}" if isinstance(lsb, int | float) else "?"
        raise NpuValidationError(
            f"the compiled NPU model differs from {reference} by {lsb_text} LSB: "
            f"{where} (artifacts and report in {outdir})"
        )


def print_optimize_summary(report: dict[str, Any], outdir: Path) -> None:
    write = sys.stdout.write
    changed = [r for r in report["passes"] if r["changed"]]
    unchanged = [r for r in report["passes"] if not r["changed"]]
    seconds = sum(r["seconds"] for r in report["passes"])
    write(f"passes: {len(changed)} of {len(report['passes'])} changed the model ({seconds:.1f} s)\n")
    for record in changed:
        checked = " verified" if record["verified"] else ""
        kind = "" if record["exact"] else " LOSSY"
        stats = ", ".join(f"{k}={v}" for k, v in record["stats"].items())
        write(f"  {record['name']:28s} {record['seconds'] * 1000:8.1f} ms{checked}{kind}  {stats}\n")
    if unchanged:
        # Listed as one line so the times above add up to the total.
        idle = sum(r["seconds"] for r in unchanged) * 1000
        write(f"  {f'{len(unchanged)} passes changed nothing':28s} {idle:8.1f} ms\n")
    b, a = report["model"]["before"], report["model"]["after"]
    memory = report.get("memory") or {}
    peak = ""
    if memory.get("peak_bytes") is not None and memory.get("peak_bytes_before") is not None:
        peak = (
            f"   peak activations {memory['peak_bytes_before']:,} -> {memory['peak_bytes']:,} B"
            " (Vela's order and layout)"
        )
    write(f"nodes {b['nodes']} -> {a['nodes']}   MACs {b['macs']:,} -> {a['macs']:,}{peak}\n")
    validation = report["validation"]
    kinds = (("outputs", "int8", "float"), ("outputs_vs_original", "int8", "original float"),
             ("tosa", "int8 TOSA", "float"))  # fmt: skip
    for key, which, what in kinds:
        for out in validation.get(key, []):
            top1 = f"   top-1 agreement {out['top1_agreement']:.0%}" if out["top1_agreement"] is not None else ""
            write(f"{which} vs {what} '{out['name']}': SNR {out['snr_db']} dB{top1}\n")
    for layer in (validation.get("layers") or {}).get("worst", [])[:3]:
        write(
            f"  int8 error enters at {layer['op']} '{layer['tensor']}': SNR {layer['input_snr_db']} -> "
            f"{layer['snr_db']} dB\n"
        )
    act16 = validation.get("activations_16")
    if act16:
        write(
            f"16-bit activations ({act16['mode']}): {len(act16['layers'])} layer(s), SNR {act16['int8']['snr_db']} -> "
            f"{act16['mixed']['snr_db']} dB, Vela {act16['int8']['inference_time_ms']} -> "
            f"{act16['mixed']['inference_time_ms']} ms ({act16['cost_pct']:+.1f}%)\n"
        )
    guard = validation.get("accuracy_guard")
    if guard:
        refused = sum(
            r["stats"].get("accuracy_refused", 0) + r["stats"].get("accuracy_guard.reverted", 0)
            for r in report["passes"]
        )
        fallback = sum(r["stats"].get("accuracy_fallback", 0) for r in report["passes"])
        write(
            f"accuracy guard (max int8 SNR drop {guard['max_snr_drop_db']} dB): {refused} rewrite(s) refused, "
            f"{fallback} replaced by a more accurate variant; "
            f"{guard['measurements']} int8 measurements in {guard['seconds']:.1f} s\n"
        )
    npu = validation.get("npu")
    if npu and "bit_exact" in npu:
        verdict = "bit-exact" if npu["bit_exact"] else f"max difference {npu['max_abs_diff_lsb']:g} LSB"
        if not npu["bit_exact"]:
            verdict += " (known: see below)" if npu.get("unexplained") is False else " (unexplained)"
        reference = "TOSA reference model" if npu.get("reference") == "tosa" else "int8 TFLite"
        write(f"compiled NPU model ({npu['method']}) vs {reference}: {verdict} on {npu['samples']} inputs\n")
        for known in npu.get("explained") or []:
            write(f"  known difference at {known['op']} '{known['tensor']}': {known['rule']}\n")
    vela = report["vela"]
    if vela:
        write(
            f"Vela {report['target']['name']}: {vela['inference_time_ms']:.3f} ms, {vela['cycles_total']:,} cycles, "
            f"SRAM {vela['sram_used_kib']:.1f} KiB, DRAM {vela['dram_used_kib']:.1f} KiB, "
            f"NPU ops {vela['npu_ops']}, CPU ops {vela['cpu_ops']}\n"
        )
        fixes = {e["op"]: e.get("fix") for e in (report.get("placement") or {}).get("cpu_ops", [])}
        for op in vela["cpu_op_list"]:
            fix = f" -> fix: {fixes[op['name']]}" if fixes.get(op["name"]) else ""
            write(f"  on CPU: {op['name']} ({op['op_type']}): {op['reason']}{fix}\n")
    write(f"platform: {report['fits']['platform']['message']}\n")
    for warning in report["warnings"]:
        write(f"warning: {warning}\n")
    write(f"wrote {outdir}\n")


def _cmd_convert(args: argparse.Namespace) -> int:
    from nirc.backend import emit, load_samples
    from nirc.outdir import write_file

    shapes = _resolve_unnamed_shape(_parse_input_shapes(args.input_shape), args.model)
    model = IRModel.load(args.model, shapes)
    proto = model.to_proto()
    options = _calibration(args)
    calib = load_samples(proto, options) if args.dtype == "int8" else None
    result = emit(proto, dtype=args.dtype, calib=calib, method=options.method, io_dtype=args.io, label=model.label)
    output: Path = args.output
    write_file(output, result.tflite.data)
    sys.stdout.write(f"wrote {output} ({len(result.tflite.data):,} bytes, {args.dtype})\n")
    return 0


def _cmd_validate(args: argparse.Namespace, registry: Registry) -> int:
    from nirc.targets.ethos_u import sim
    from nirc.targets.ethos_u.npu_check import check_npu_files, random_feeds

    if args.int8_tflite.suffix != ".tosa":
        _check_validate_files(args.vela_tflite, args.int8_tflite)
    tosa = None if args.describe else _tosa_reference(args.vela_tflite, args.int8_tflite)
    if tosa is not None:  # a TOSA-form artifact computes its TOSA graph, not the int8 TFLite
        from nirc.tosa.artifact import validate_command

        return validate_command(args.vela_tflite, tosa, args.samples, sys.stdout.write)
    if args.describe:
        sys.stdout.write(sim.describe(args.vela_tflite) + "\n")
        return 0
    feeds = random_feeds(args.int8_tflite, args.samples)
    target = registry.get_target(args.target) if args.method == "fvp" else None
    result = check_npu_files(args.vela_tflite, args.int8_tflite, feeds, args.method, target, args.reference)
    for line in _npu_lines(result):
        sys.stdout.write(line + "\n")
    if result["unexplained"]:
        from nirc.errors import NpuValidationError

        raise NpuValidationError(
            f"{args.vela_tflite} differs from {args.int8_tflite} by {result['max_abs_diff_lsb']:g} LSB: "
            f"{result['first_divergence']}"
        )
    return 0


def _npu_lines(npu: dict[str, Any]) -> list[str]:
    """The validation record as a few lines: per input, intermediates, CPU ops, known differences, verdict."""
    details = npu["details"]
    lines = [f"reference: {details['reference']}"]
    for sample in details["per_sample"]:
        where = f", first at {sample['first_divergence']}" if sample["first_divergence"] else ""
        verdict = "bit-exact" if sample["bit_exact"] else f"max diff {sample['max_abs_diff_lsb']:g} LSB"
        lines.append(f"{npu['method']} input {sample['sample']}: {verdict}{where}")
    inter = details.get("intermediates")
    if inter:
        lines.append(
            f"intermediates: {inter['compared']} NPU results compared with int8 tensors over {npu['samples']} inputs, "
            f"{inter['differing']} differ ({inter['from_stripes']} stacked from cascade stripes, "
            f"{inter['from_slices']} joined from depth slices); "
            f"{inter['slices_matched'] + inter['slices_unchecked']} lone depth slices, "
            f"{inter['unmapped']} with no int8 tensor of their shape"
        )
    cpu = details.get("cpu_op_list") or []
    if cpu:
        lines.append("CPU ops (reference only, same kernels as the reference): "
                     + ", ".join(f"{c['opcode']} #{c['op']}" for c in cpu))  # fmt: skip
    lines.extend(f"known difference: {k['op']} {k['tensor']!r}: {k['rule']}" for k in npu["explained"])
    exact = "bit-exact" if npu["bit_exact"] else f"max difference {npu['max_abs_diff_lsb']:g} LSB"
    lines.append(f"{exact} on {npu['samples']} random inputs")
    return lines


def _tosa_reference(vela: Path, reference: Path) -> Path | None:
    """The TOSA graph a TOSA-form artifact is checked against (see nirc.tosa.artifact.find_tosa)."""
    from nirc.tosa.marker import tosa_source

    if reference.suffix != ".tosa" and (not vela.is_file() or tosa_source(vela.read_bytes()) is None):
        return None
    from nirc.tosa.artifact import find_tosa  # needs tosa-tools

    return find_tosa(vela, reference)


def _check_validate_files(vela: Path, int8: Path) -> None:
    """VELA must hold the NPU command stream and INT8 must not: say so rather than fail inside LiteRT."""
    from nirc.errors import ModelLoadError
    from nirc.targets.ethos_u.vela_driver import npu_op_count

    for path in (vela, int8):
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
    vela_ops = npu_op_count(vela.read_bytes(), str(vela))
    int8_ops = npu_op_count(int8.read_bytes(), str(int8))
    if not vela_ops and int8_ops:
        raise ModelLoadError(
            f"{vela} and {int8} look swapped: the Vela-compiled file comes first (nirc validate VELA INT8)"
        )
    if not vela_ops:
        raise ModelLoadError(f"{vela}: has no ethos-u operator, not a Vela-compiled model")
    if int8_ops:
        raise ModelLoadError(f"{int8}: is Vela-compiled; the second file is the int8 TFLite Vela read")


def _cmd_passes(registry: Registry, target_name: str) -> int:
    width = max((len(name) for name in registry.passes), default=0)
    target = registry.get_target(target_name)
    pipeline = registry.pipeline(target)
    write = sys.stdout.write
    write(f"default pipeline for {target.name} (run order; plugin passes placed by their plugins):\n")
    for i, (name, stage) in enumerate(zip(pipeline.names, pipeline.stages, strict=True), 1):
        origin = registry.pass_registry.origin[name]
        write(f"  {i:2d}. {name:{width}s}  {stage:9s}  {origin}\n")
    write("\nregistered passes:\n")
    for name in sorted(registry.passes):
        cls = registry.passes[name]
        kind = "exact" if cls.exact else "lossy"
        origin = registry.pass_registry.origin[name]
        sys.stdout.write(f"{name:{width}s}  {kind:5s}  {origin:16s} {cls.description()}\n")
    return 0


def _cmd_targets(registry: Registry) -> int:
    for name in registry.targets:  # registration order keeps the families together
        t = registry.targets[name]
        aliases = f" (alias: {', '.join(t.aliases)})" if t.aliases else ""
        sys.stdout.write(f"{name:18s} {t.description}{aliases}\n")
    return 0


class Terminated(BaseException):
    """SIGTERM/SIGHUP as an exception, so every ``finally`` (staging and scratch cleanup) runs.

    A BaseException like KeyboardInterrupt, so ``except Exception`` in a pass cannot swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise Terminated(signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # main() called from a worker thread (embedding): leave signals to the host
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _terminate)


def _quiet_stdout_after_broken_pipe() -> None:
    """``nirc passes | head -3``: the reader left; stop quietly, and let the final flush go nowhere."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _run(args: argparse.Namespace) -> int:
    registry = load_registry()
    if args.command == "analyze":
        return _cmd_analyze(args, registry)
    if args.command == "optimize":
        return _cmd_optimize(args, registry)
    if args.command == "convert":
        return _cmd_convert(args)
    if args.command == "validate":
        return _cmd_validate(args, registry)
    if args.command in cost_cli.COMMANDS:
        return cost_cli.run(args)
    if args.command == "search":
        return search_cli.run(args)
    if args.command == compress_cli.COMMAND:
        return compress_cli.run(args)
    if args.command == "passes":
        return _cmd_passes(registry, args.target)
    return _cmd_targets(registry)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")
    _install_signal_handlers()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.quiet and not debug:
            logging.getLogger("nirc").setLevel(logging.ERROR)
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except NircError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"nirc: error: {exc}\n")
        return exc.exit_code
    except argparse.ArgumentTypeError as exc:
        sys.stderr.write(f"nirc: error: {exc}\n")
        return 2
    except BrokenPipeError:
        _quiet_stdout_after_broken_pipe()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("nirc: interrupted\n")
        return 130
    except Terminated as exc:
        sys.stderr.write(f"nirc: stopped by {exc}; no output written\n")
        return 128 + exc.signum
    except Exception as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"nirc: internal error: {type(exc).__name__}: {exc} (rerun with --debug)\n")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
