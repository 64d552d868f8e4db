"""``nirc compress``: the command-line front end of :func:`nirc.compress.api.compress`.

``nirc/cli.py`` wires it in like the cost commands (``add_arguments`` on its subparser, ``run``).
Exit codes: 0 budget met (artifacts written); 10 budget not met (only ``<stem>_closest.onnx`` and the
reports are written, saying so); the usual NircError codes otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nirc.options import DEFAULT_TARGET, TARGET_HELP

COMMAND = "compress"
HELP = "prune / decompose a float model to a Vela latency or size budget, then compile it"
EXIT_TEXT = "10 compress budget not met (closest result reported, not written as the compressed model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="float ONNX model")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=TARGET_HELP)
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument("--latency-ms", type=float, help="Vela latency the compressed model must reach")
    timing.add_argument("--speedup", type=float, help="Vela latency reduction factor (e.g. 5 for 5x)")
    parser.add_argument(
        "--size-mib", type=float,
        help="int8 weight size (MiB) the compressed model must reach; alone or with --latency-ms/--speedup (both hold)",
    )  # fmt: skip
    parser.add_argument(
        "--calib", type=Path, required=True,
        help=".npy/.npz/image folder of calibration inputs (an .npz 'labels' array adds top-1 accuracy)",
    )  # fmt: skip
    parser.add_argument("--calib-count", type=int, default=256, help="samples to use (a quarter held out)")
    parser.add_argument(
        "--methods", default="prune,lowrank,cp",
        help="comma-separated: prune, lowrank, cp (CP form of lowrank's kxk decompositions; default: all three)",
    )  # fmt: skip
    parser.add_argument(
        "--criterion", choices=("activation", "l2", "geometric-median"), default="activation",
        help="channel importance for pruning (default: activation, data-driven)",
    )  # fmt: skip
    parser.add_argument("-o", "--outdir", type=Path, help="output directory (default: <model stem>_compressed)")


def run(args: argparse.Namespace) -> int:
    from nirc.compress.api import BudgetNotMetError, compress, write

    quiet = bool(getattr(args, "quiet", False))

    def progress(message: str) -> None:
        if not quiet:
            sys.stderr.write(f"nirc compress: {message}\n")

    if not (args.latency_ms or args.speedup or args.size_mib):
        sys.stderr.write("nirc compress: one of the arguments --latency-ms --size-mib --speedup is required\n")
        return 2
    stem = args.model.stem
    outdir = args.outdir or Path(f"{stem}_compressed")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        result = compress(
            args.model, args.target, latency_ms=args.latency_ms, size_mib=args.size_mib, speedup=args.speedup,
            calib=args.calib, samples=args.calib_count, methods=methods, criterion=args.criterion,
            progress=progress,
        )  # fmt: skip
    except BudgetNotMetError as exc:
        paths = write(exc.result, outdir, stem, args.target, args.calib)
        sys.stderr.write(f"nirc: {exc}; closest result in {paths['model']} and {paths['markdown']}\n")
        return exc.exit_code
    paths = write(result, outdir, stem, args.target, args.calib)
    out = sys.stdout
    o, c = result.original, result.compressed
    out.write(
        f"budget {result.budget.text()} met: Vela {o.latency_ms:.3f} -> {c.latency_ms:.3f} ms "
        f"({o.latency_ms / c.latency_ms:.2f}x), int8 weights {o.size_mib:.2f} -> {c.size_mib:.2f} MiB\n"
    )
    for path in paths.values():
        out.write(f"wrote {path}\n")
    return 0
