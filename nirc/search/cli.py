"""``nirc search``: the command-line front end of :func:`nirc.search.search` and the from-model mode.

``nirc/cli.py`` wires it in with ``add_arguments(sub.add_parser("search", help=HELP))`` and
``run(args)``; errors are NircErrors, which the main CLI turns into one line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from nirc.errors import NircError
from nirc.options import DEFAULT_TARGET, TARGET_HELP

HELP = "recommend architectures and input sizes that meet a latency / size budget on a target"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=DEFAULT_TARGET, help=TARGET_HELP)
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="what the candidates do: classification heads or YOLO-style detectors (default classification)")
    p.add_argument("--input-size", type=int, default=None,
                   help="the images' size; candidates use it and x0.75, x0.5 (default 224; detection 640)")
    p.add_argument("--latency-ms", type=float, default=None, help="budget: Vela's estimated inference time")
    p.add_argument("--max-mib", type=float, default=None, help="budget: int8 weights in MiB")
    p.add_argument("--families", type=_csv, default=None, help="comma-separated (default: all of the task's)")
    p.add_argument("--variants", type=_csv, default=None, help="comma-separated variant names to keep")
    p.add_argument("--resolutions", type=_ints, default=None, help="comma-separated input sizes instead of the default")
    p.add_argument("--classes", type=int, default=None, help="classes (default 1000; detection 80)")
    p.add_argument("--model", type=Path, default=None,
                   help="search from this ONNX: its width x resolution variants instead of the families")
    p.add_argument("--widths", type=_floats, default=[0.5, 0.75, 1.0], help="with --model (default 0.5,0.75,1.0)")
    p.add_argument("--pipeline", choices=("fast", "full"), default="fast",
                   help="fast (default): skip the passes that run Vela in a loop; full: nirc optimize's pipeline")
    p.add_argument("--executor", choices=("serial", "pool", "ray"), default=None,
                   help="where candidates compile (default serial; ray with --ray-address)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="pool processes / local Ray CPUs (default 2)")
    p.add_argument("--ray-address", default=None, help="a Ray cluster to run on (implies --executor ray)")
    p.add_argument("-o", "--outdir", type=Path, default=Path("search_out"),
                   help="search.md, search.json, pareto.png, onnx/ (default ./search_out)")
    p.add_argument("--no-plot", action="store_true", help="no pareto.png")
    p.add_argument("--list-families", action="store_true", help="list the families and their variants, then stop")
    p.set_defaults(search_command=True)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run ``nirc search``; returns the exit code (0 also when nothing meets the budget: the table says so)."""
    from nirc.search.evaluate import Executor
    from nirc.search.families import FAMILIES
    from nirc.search.rows import Budget
    from nirc.search.search import evaluate_candidates, search

    out = sys.stdout
    if args.list_families:
        for family in FAMILIES.values():
            out.write(f"{family.name} ({family.task}): {family.doc}\n    variants: {', '.join(family.variants)}\n")
        return 0
    executor: Executor = args.executor or ("ray" if args.ray_address else "serial")
    if args.ray_address and executor != "ray":
        raise NircError("--ray-address goes with --executor ray")
    budget = Budget(args.latency_ms, args.max_mib)
    notes: list[str] = []
    if args.model is not None:
        from nirc.ir import IRModel
        from nirc.search.scale import model_variants

        proto = IRModel.load(args.model).to_proto(check=False)  # one-line errors for a bad file
        space, models, notes = model_variants(proto, args.model.stem, widths=args.widths,
                                              resolutions=args.resolutions)  # fmt: skip
        result = evaluate_candidates(space, args.target, args.task, budget, pipeline=args.pipeline,
                                     executor=executor, jobs=args.jobs, ray_address=args.ray_address,
                                     models=models)  # fmt: skip
    else:
        size = args.input_size or (640 if args.task == "detection" else 224)
        result = search(target=args.target, task=args.task, input_size=size, budget=budget, families=args.families,
                        variants=args.variants, resolutions=args.resolutions, classes=args.classes,
                        pipeline=args.pipeline, executor=executor, jobs=args.jobs,
                        ray_address=args.ray_address)  # fmt: skip
    if notes:
        result = replace(result, notes=tuple(notes))
    written = result.write(args.outdir, plot=not args.no_plot)
    if not args.quiet:
        out.write(result.table())
        for note in result.notes:
            out.write(f"note: {note}\n")
        picks = ", ".join(r.name for r in result.recommended) or "none meets the budget"
        out.write(f"recommended: {picks}\n")
        for path in written:
            out.write(f"wrote {path}\n")
    return 0
