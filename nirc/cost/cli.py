"""Command-line front ends of the cost package: ``nirc profile-blocks`` and ``nirc cache``.

``nirc/cli.py`` wires them in with::

    for name in COMMANDS:
        cost_cli.add_arguments(sub.add_parser(name, help=COMMANDS[name]), name)
    ...
    if args.command in COMMANDS:
        return cost_cli.run(args)

Errors are NircErrors, which the main CLI already turns into one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nirc.cost.blocks import BLOCK_KINDS
from nirc.options import DEFAULT_TARGET, TARGET_HELP

COMMANDS: dict[str, str] = {
    "profile-blocks": "characterize conv types and building blocks over feature-map sizes with Vela",
    "cache": "show or clear nirc's cost cache",
}
"""Subcommand name -> one-line help."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the options of ``command`` (a key of :data:`COMMANDS`) to its subparser."""
    if command == "profile-blocks":
        parser.add_argument("--target", default=DEFAULT_TARGET, help=TARGET_HELP)
        parser.add_argument("-o", "--outdir", type=Path, default=Path("profile_blocks"), help="output directory")
        parser.add_argument("-j", "--jobs", type=int, default=1, help="parallel Vela processes")
        parser.add_argument("--quick", action="store_true", help="a small sweep (H=W in 7,14; C in 16,32)")
        parser.add_argument(
            "--types",
            help=f"comma-separated block types (default: all of {', '.join(BLOCK_KINDS)})",
        )
        parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cost cache")
        parser.add_argument("--no-plots", action="store_true", help="write the CSV only")
    elif command == "cache":
        parser.add_argument("action", choices=("info", "clear"), help="info: location and size; clear: delete entries")
    else:
        raise ValueError(f"unknown cost command {command!r}")
    parser.set_defaults(cost_command=command)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand whose options :func:`add_arguments` added; returns the exit code."""
    command = getattr(args, "cost_command", None)
    if command == "profile-blocks":
        return _profile_blocks(args)
    if command == "cache":
        return _cache(args)
    raise ValueError(f"not a cost command: {command!r}")


def _profile_blocks(args: argparse.Namespace) -> int:
    from nirc.cost.oracle import resolve_target
    from nirc.cost.profile import NO_PLOTS_NOTE, run_profile

    if args.jobs < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be at least 1, got {args.jobs}")
    kinds = [k.strip() for k in args.types.split(",") if k.strip()] if args.types else None
    unknown = [k for k in kinds or () if k not in BLOCK_KINDS]
    if unknown:
        from nirc.errors import NircError

        raise NircError(f"unknown block type {unknown[0]!r}; known: {', '.join(BLOCK_KINDS)}")
    target = resolve_target(args.target)
    rows, written = run_profile(
        target, args.outdir, jobs=args.jobs, quick=args.quick, kinds=kinds,
        use_cache=not args.no_cache, plots=not args.no_plots,
    )  # fmt: skip
    out = sys.stdout
    out.write(f"profiled {len(rows)} blocks on {target.name}\n")
    if not args.no_plots and len(written) == 1:
        out.write(f"note: {NO_PLOTS_NOTE}\n")
    for path in written:
        out.write(f"wrote {path}\n")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from nirc.cost.cache import cache_info, clear_cache

    if args.action == "clear":
        removed = clear_cache()
        sys.stdout.write(f"removed {removed} cost entries from {cache_info().path}\n")
        return 0
    info = cache_info()
    sys.stdout.write(f"cost cache: {info.path}\nentries: {info.entries}\nsize: {info.bytes:,} bytes\n")
    return 0
