"""NPU validation you can trust: which zoo models' compiled artifacts are bit-exact against their reference.

Usage: python benchmarks/npu_validation.py [--exports /work/zoo_exports] [--only PATTERN,...]
                                           [--samples 8] [-o benchmarks/results/npu_validation.md]
                                           [--workdir DIR] [--forms both|default]

For each public-zoo export (both exporters where listed) the model is compiled by
``nirc.pipeline.optimize`` for ethos-u65-256 with the zoo's natural-image calibration
(``benchmarks/zoo.py``) and without the built-in check; then Vela's output is run in
the functional model on ``--samples`` seeded random int8 inputs and compared, zero
tolerance, with TFLite Micro on the int8 TFLite: every output and every NPU result
that is a whole tensor of the int8 model.  As a second opinion, LiteRT's reference
kernels run the same int8 model and the elements where they disagree with TFLite
Micro are counted (the FULLY_CONNECTED tie question).  A model the functional model
cannot execute is listed with the one-line reason (what is not modelled).

Where the default ``--npu-format auto`` picks the TOSA form, that artifact gets a second
row: it computes its TOSA graph (TABLE ops), not the int8 TFLite, so it is checked as
``nirc validate`` checks it, against the TOSA reference model, outputs only.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from nirc.targets.ethos_u.npu_check import random_feeds  # noqa: E402
from nirc.targets.ethos_u.sim.reference import LiteRTModel  # noqa: E402
from nirc.targets.ethos_u.sim.validate import validate_artifact  # noqa: E402
from zoo import calib_file  # noqa: E402

from nirc.errors import BackendError  # noqa: E402
from nirc.options import CalibrationOptions  # noqa: E402
from nirc.pipeline import optimize  # noqa: E402

MODELS = (
    "torchvision__mobilenet_v2__torchscript",
    "torchvision__mobilenet_v2__dynamo",
    "torchvision__mobilenet_v3_small__torchscript",
    "torchvision__resnet18__torchscript",
    "torchvision__squeezenet1_1__dynamo",
    "timm__lcnet_050__dynamo",
    "torchvision__mobilenet_v3_small__dynamo",
    "torchvision__efficientnet_b0__torchscript",
    "torchvision__regnet_x_400mf__torchscript",
    "torchvision__shufflenet_v2_x1_0__dynamo",
    "ultralytics__yolov8n__ultralytics",
    "timm__efficientvit_b0__torchscript",
)


def _second_opinion(int8: Path, feeds: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]]) -> str:
    """Elements where LiteRT's reference kernels disagree with TFLite Micro on the int8 model."""
    litert = LiteRTModel(int8.read_bytes(), "reference", keep=False)
    differing = total = 0
    for feed, ref in zip(feeds, reference, strict=True):
        out = litert.run(feed).outputs
        for name, value in ref.items():
            differing += int(np.count_nonzero(out[name].astype(np.int64) != value.astype(np.int64)))
            total += value.size
    return f"{differing} of {total}"


def one(path: Path, work: Path, samples: int, npu_format: str = "tflite") -> dict[str, Any]:
    """The TFLite-form artifact against TFLite Micro: every output and every layer that maps.

    ``npu_format="auto"`` reuses the artifact :func:`one_tosa` compiled, when ``auto`` kept TFLite.
    """
    row: dict[str, Any] = {"model": path.stem, "form": "tflite"}
    out = work / (path.stem if npu_format == "tflite" else f"{path.stem}__auto")
    start = time.perf_counter()
    try:
        if not (out / f"{path.stem}_vela.tflite").is_file():
            optimize(
                path, "ethos-u65-256", outdir=out, require_fit=False, validate_npu="none", accuracy=False,
                layer_report=False, calibration=CalibrationOptions(path=calib_file(path, work)), npu_format=npu_format,
            )  # fmt: skip
    except Exception as exc:  # a benchmark row, not a crash: the compile itself is measured elsewhere
        row["status"] = f"compile failed: {type(exc).__name__}: {str(exc)[:200]}"
        return row
    row["compile_s"] = time.perf_counter() - start
    vela, int8 = out / f"{path.stem}_vela.tflite", out / f"{path.stem}_int8.tflite"
    feeds = random_feeds(int8, samples)
    start = time.perf_counter()
    try:
        result = validate_artifact(vela, int8, feeds)
    except BackendError as exc:
        row["status"] = f"not executed: {str(exc)[:240]}"
        return row
    row["validate_s"] = time.perf_counter() - start
    details = result.details
    row.update(
        status="ok",
        bit_exact=result.bit_exact,
        unexplained=result.unexplained,
        exact_samples=sum(1 for s in details["per_sample"] if s["bit_exact"]),
        samples=len(feeds),
        max_lsb=result.max_abs_diff_lsb,
        first=result.first_divergence,
        explained=result.explained,
        inter=details["intermediates"],
        cpu=[f"{c['opcode']}" for c in details["cpu_op_list"]],
        litert_ops=details["reference_litert_ops"],
        reference=details["reference"],
    )
    from nirc.targets.ethos_u.sim.reference import Reference

    reference = Reference(int8, keep=False)
    row["second_opinion"] = _second_opinion(int8, feeds, [reference.run(f).outputs for f in feeds])
    return row


def one_tosa(path: Path, work: Path, samples: int) -> dict[str, Any] | None:
    """The default (``--npu-format auto``) artifact when it is the TOSA form: against the TOSA reference model.

    Only outputs are compared there (the TOSA reference model gives no intermediates);
    None when ``auto`` keeps the TFLite form, which :func:`one` already covers.
    """
    from nirc.tosa.artifact import validate as validate_tosa

    row: dict[str, Any] = {"model": path.stem, "form": "tosa"}
    out = work / f"{path.stem}__auto"
    try:
        if not (out / f"{path.stem}_vela.tflite").is_file():
            optimize(
                path, "ethos-u65-256", outdir=out, require_fit=False, validate_npu="none", accuracy=False,
                layer_report=False, calibration=CalibrationOptions(path=calib_file(path, work)), npu_format="auto",
            )  # fmt: skip
    except Exception as exc:
        row["status"] = f"compile failed: {type(exc).__name__}: {str(exc)[:200]}"
        return row
    tosa = out / f"{path.stem}_npu.tosa"
    if not tosa.is_file():
        return None
    start = time.perf_counter()
    try:
        result = validate_tosa(out / f"{path.stem}_vela.tflite", tosa, samples)
    except BackendError as exc:
        row["status"] = f"not executed: {str(exc)[:240]}"
        return row
    worst = result.max_abs_diff_lsb
    row.update(
        status="ok",
        validate_s=time.perf_counter() - start,
        unexplained=worst > 0,
        exact_samples=sum(c.bit_exact for c in result.checks),
        samples=len(result.checks),
        max_lsb=worst,
        first=next((c.first_divergence for c in result.checks if c.first_divergence), None),
    )
    return row


def _reference_cell(row: dict[str, Any]) -> str:
    if row["form"] == "tosa":
        return "TOSA reference model (outputs only)"
    ops = row["litert_ops"]
    if not ops:
        return "TFLite Micro"
    if ops == ["*"]:
        return "LiteRT (no TFLite Micro)"
    names = sorted({o.split(" #")[0] for o in ops})
    return f"TFLite Micro op by op; LiteRT for {', '.join(names)} x{len(ops)}"


def to_markdown(rows: list[dict[str, Any]], samples: int) -> str:
    lines = [
        "# NPU validation: compiled artifacts vs TFLite Micro (TFLite form) and the TOSA reference model "
        "(TOSA form), zero tolerance",
        "",
        f"`python benchmarks/npu_validation.py --samples {samples}` on {platform.machine()} "
        f"({platform.python_version()}): ethos-u65-256, zoo natural-image calibration, {samples} seeded random "
        "int8 inputs per model. Rows are the TFLite-form artifact (`--npu-format tflite`); where the default "
        "`--npu-format auto` picks the TOSA form, a *(TOSA form)* row checks that artifact against the TOSA "
        "reference model (outputs only). *Compared* = NPU results matched with a whole int8 tensor (all inputs); "
        "*from stripes* = of those, layers Vela cascades, compared as their stripes stacked top to bottom; "
        "*slices* = results that are a depth slice of a larger tensor (compared only where they equal one); "
        "*unmapped* = results with no int8 tensor of their "
        "shape (Vela's own decompositions). *LiteRT vs TFLite Micro* = output elements where LiteRT's "
        "reference kernels disagree with TFLite Micro on the same int8 model (the second opinion).",
        "",
        "| model | reference | exact inputs | max diff (LSB) | compared | differing | from stripes | slices | "
        "unmapped | CPU ops (reference only) | LiteRT vs TFLite Micro | validate (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    notes: list[str] = []
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row['model']} | - | - | - | - | - | - | - | - | - | - | - |")
            notes.append(f"- {row['model']}: {row['status']}")
            continue
        label = f"{row['model']} (TOSA form)" if row["form"] == "tosa" else row["model"]
        if row["form"] == "tosa":
            lines.append(
                f"| {label} | {_reference_cell(row)} | {row['exact_samples']}/{row['samples']} | {row['max_lsb']:g} "
                f"| - | - | - | - | - | - | - | {row['validate_s']:.1f} |"
            )
            if row["first"]:
                notes.append(f"- {label} (unexplained): {row['first']}")
            continue
        inter = row["inter"]
        stripes = inter["from_stripes"]
        cpu = ", ".join(sorted(set(row["cpu"]))) or "none"
        lines.append(
            f"| {row['model']} | {_reference_cell(row)} | {row['exact_samples']}/{row['samples']} | "
            f"{row['max_lsb']:g} | {inter['compared']} | {inter['differing']} | {stripes} | "
            f"{inter['slices_matched'] + inter['slices_unchecked']} | {inter['unmapped']} | "
            f"{cpu} | {row['second_opinion']} | {row['validate_s']:.1f} |"
        )
        if row["first"]:
            kind = "unexplained" if row["unexplained"] else "explained"
            notes.append(f"- {row['model']} ({kind}): {row['first']}")
    if notes:
        lines += ["", "Not bit-exact or not executed:", "", *notes]
    unexplained = [r["model"] for r in rows if r.get("status") == "ok" and r.get("unexplained")]
    if unexplained:
        lines += ["", f"**Unexplained** (the run fails validation): {', '.join(unexplained)}; the reading below holds "
                  "for every other row."]  # fmt: skip
    lines += ["", *FOOTER]
    return "\n".join(lines) + "\n"


FOOTER = [
    "Reading the table: every compiled artifact the functional model executes matches TFLite Micro bit for "
    "bit on every input, in its outputs and in every layer it could map; a known difference is listed by op "
    "and rule (`targets/ethos_u/sim/known.py`) with the reference continued from the NPU's value. TOSA-form "
    "artifacts (the default where Vela estimates them faster) match the TOSA reference model bit for bit on "
    "every output. LiteRT's "
    "reference kernels, run on the same int8 models, disagree with TFLite Micro in the counted output "
    "elements: its FULLY_CONNECTED rounds some ties once where TFLite Micro rounds twice "
    "(`nirc validate --reference litert` reports them as known, by op). The FC tie question is settled "
    "in favour of TFLite Micro: the model of Vela's registers (TFLite's double rounding) equals it everywhere.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exports", type=Path, default=Path("/work/zoo_exports"))
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated export stems")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "npu_validation.md")
    parser.add_argument("--workdir", type=Path, help="keep the compiled artifacts here (reused when present)")
    parser.add_argument(
        "--forms", choices=("both", "default"), default="both",
        help="both: the TFLite form, and the TOSA form where auto picks it; default: only what auto picks",
    )  # fmt: skip
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nirc-npu-validation-") as scratch:
        tmp = args.workdir or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for stem in args.only.split(","):
            path = args.exports / f"{stem}.onnx"
            if not path.is_file():
                print(f"skip {stem}: no {path}", flush=True)
                continue
            if args.forms == "both":
                found = [one(path, Path(tmp), args.samples), one_tosa(path, Path(tmp), args.samples)]
            else:
                found = [one_tosa(path, Path(tmp), args.samples)]
                found = [found[0] or one(path, Path(tmp), args.samples, npu_format="auto")]
            for row in found:
                if row is None:
                    continue
                rows.append(row)
                args.output.write_text(to_markdown(rows, args.samples), encoding="utf-8")
                keys = ("status", "exact_samples", "max_lsb", "first", "second_opinion")
                summary = {k: row.get(k) for k in keys}
                print(f"{stem} [{row['form']}]: {summary}", flush=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
