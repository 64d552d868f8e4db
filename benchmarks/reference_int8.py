#!/usr/bin/env python3
"""int8 TFLite files from the two reference quantizers, for ``benchmarks/accuracy.py``'s reference columns.

Runs in a separate venv with TensorFlow (never nirc's; the project extra ``tf`` names it)::

    python3 -m venv /work/tfenv
    /work/tfenv/bin/pip install tensorflow==2.21.0 tf-keras==2.21.0 onnx2tf onnx onnxruntime ai-edge-litert \\
        onnx-graphsurgeon sng4onnx psutil networkx pluggy tflite flatbuffers ethos-u-vela
    /work/tfenv/bin/pip install -e . --no-deps
    /work/tfenv/bin/python benchmarks/reference_int8.py MODEL.onnx CALIB.npz OUTDIR [--name NAME]

Writes ``OUTDIR/NAME__tflite_converter.tflite`` and ``OUTDIR/NAME__onnx2tf.tflite`` (int8 in and out),
each with a ``.json`` note (tool versions, or the error when a tool failed). Both see the same float
model and the same calibration samples nirc gets:

* **TensorFlow Lite converter** (full-integer PTQ, ``Optimize.DEFAULT``, ``TFLITE_BUILTINS_INT8``,
  representative dataset = the calibration samples): the converter needs a TensorFlow graph, so the
  model goes through nirc's canonical passes (exact: BatchNormalization folded) and
  ``benchmarks/tf_reference.py``'s node-by-node NHWC translation, checked against ONNX Runtime first.
* **onnx2tf** (``-oiqt``, per-channel, calibration ``-cind`` with the same samples in NHWC, mean 0 and
  std 1 so the samples are used as they are): its ``*_full_integer_quant.tflite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def tflite_converter(model: Path, calib: np.ndarray) -> bytes:
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf
    from tf_reference import FLOAT_TOL, OnnxToTF, tf_convert_int8

    from nirc.ir import IRModel
    from nirc.pipeline import run_passes, select_passes
    from nirc.plugin import load_registry
    from nirc.verify import run_onnx

    registry = load_registry()
    target = registry.get_target("ethos-u65")
    ir = IRModel.load(model)
    run_passes(ir, target, select_passes(registry, target, no_hw_passes=True))
    proto = ir.to_proto()
    translator = OnnxToTF(proto)
    concrete = translator.concrete_function()
    checks = calib[:4]
    reference = [run[0] for run in run_onnx(proto, [{translator.input_name: x[None]} for x in checks])]
    got = [concrete(tf.constant(x[None].transpose(0, 2, 3, 1)))[0].numpy() for x in checks]
    err = max(float(np.max(np.abs(g - r))) for g, r in zip(got, reference, strict=True))
    scale = max(float(np.max(np.abs(r))) for r in reference)
    if err > FLOAT_TOL * scale:
        raise RuntimeError(f"TF translation differs from ORT by {err:g} (max |ref| {scale:g})")
    return tf_convert_int8(concrete, [x[None].transpose(0, 2, 3, 1) for x in calib])


def onnx2tf(model: Path, calib: np.ndarray, input_name: str, work: Path) -> bytes:
    # onnx2tf re-saves its input file in place (renamed ops, doc string dropped): give it a copy.
    copy = work / model.name
    shutil.copyfile(model, copy)
    model = copy
    npy = work / "calib_nhwc.npy"
    np.save(npy, calib.transpose(0, 2, 3, 1).astype(np.float32))
    # For 3-channel image inputs onnx2tf runs its own float checks on sample images it downloads unless a
    # file of that name is in the working directory: give it the calibration samples instead (no network).
    shutil.copyfile(npy, work / "calibration_image_sample_data_20x128x128x3_float32.npy")
    channels = calib.shape[1]
    mean = json.dumps([[[[0.0] * channels]]])
    std = json.dumps([[[[1.0] * channels]]])
    exe = Path(sys.executable).with_name("onnx2tf")
    cmd = [
        str(exe),
        "-i",
        str(model),
        "-o",
        str(work / "out"),
        "-oiqt",
        "-qt",
        "per-channel",
        "-cind",
        input_name,
        str(npy),
        mean,
        std,
        "-n",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
    (work / "onnx2tf.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    found = sorted((work / "out").glob("*_full_integer_quant.tflite"))
    if result.returncode != 0 or not found:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"onnx2tf exit {result.returncode}: " + " | ".join(tail))
    return found[0].read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path, help=".npz with the model's input name")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--name", help="file stem (default: the model's)")
    parser.add_argument("--count", type=int, default=16, help="calibration samples (nirc's --calib-count default)")
    parser.add_argument("--tools", default="tflite_converter,onnx2tf")
    args = parser.parse_args()
    import onnx

    input_name = onnx.load(str(args.model), load_external_data=False).graph.input[0].name
    calib = np.load(args.calib)[input_name][: args.count].astype(np.float32)
    name = args.name or args.model.stem
    args.outdir.mkdir(parents=True, exist_ok=True)
    versions = {d: _version(d) for d in ("tensorflow", "onnx2tf", "onnx", "onnxruntime")}
    status = 0
    for tool in args.tools.split(","):
        note: dict[str, object] = {"tool": tool, "versions": versions, "calibration_samples": len(calib)}
        out = args.outdir / f"{name}__{tool}.tflite"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                if tool == "tflite_converter":
                    data = tflite_converter(args.model, calib)
                elif tool == "onnx2tf":
                    data = onnx2tf(args.model, calib, input_name, Path(tmp))
                else:
                    raise SystemExit(f"unknown tool {tool}")
            out.write_bytes(data)
            note["ok"] = True
            print(f"{name}: {tool} -> {out} ({len(data) / 1024:.0f} KiB)", flush=True)
        except Exception as exc:  # a reference tool failing is a table cell, not a crash
            out.unlink(missing_ok=True)
            note |= {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
            status = 1
        out.with_suffix(".json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
