#!/usr/bin/env python3
"""int8 accuracy of nirc's compiled models: SNR against the float model and top-1, per configuration.

Usage::

    python benchmarks/accuracy.py [-o benchmarks/results/accuracy.md] [--models NAME,...]
        [--zoo /work/zoo_exports] [--repvgg-a0 PATH.onnx]

Models (each skipped with a note when its file is missing):

* ``digits_cnn`` -- the trained digits CNN (``examples/train_digits.py``: scikit-learn's 1,797 real 8x8
  handwritten digits, *not* CIFAR-100), calibrated on ``examples/digits_calib.npz`` and scored on the
  held-out ``examples/digits_val.npz`` with its labels: top-1 float vs int8 is a real accuracy number.
* ``repvgg_narrow_64`` -- the test fixture (timm RepVGG blocks in training form, BN re-estimated).
* ``repvgg_a0_224`` -- timm RepVGG-A0 in training form (``examples/export_repvgg.py --model repvgg_a0``).
* zoo models (``--zoo``: torchvision exports with BN statistics re-estimated, random weights).

The RepVGG models (BN statistics from photo crops) are calibrated on 16 crops of scikit-learn's two
sample photos and scored on 16 other crops (``examples/export_repvgg.py: crops``; ImageNet mean/std);
the zoo models and ``repvgg_a0_224_nbn``, whose BN statistics came from N(0,1) batches, on N(0,1)
inputs (seeds 7 and 8): the data their statistics describe. Random-weight networks have no task accuracy:
for them only SNR means something, and "top-1" is agreement between int8 and float arg-max.

Configurations (all ethos-u65, full pipeline unless said): ``nirc`` = defaults (accuracy guard on,
0.5 dB); ``no-guard`` = ``--no-accuracy-guard`` (what nirc did before the guard); ``no-hw`` =
``--no-hw-passes``; ``mse-w`` = defaults + ``--weight-range mse``; ``ada-w`` = defaults +
``--weight-range adaround``; ``bc`` = defaults +
``--bias-correction``. SNR is int8 (LiteRT) vs float (ORT) over the held-out samples, worst output.
``no-cle`` = defaults without ``equalize-cross-layer``. ``tflite-converter`` and ``onnx2tf``: the
reference quantizers on the same ONNX and the same calibration samples, made by
``benchmarks/reference_int8.py`` in a separate TensorFlow venv (``--tf-python``; cached in ``--references``).
The trained ``*_digits32`` models come from ``examples/train_small.py`` (``--trained``): held-out top-1 on
539 real digits (*not* CIFAR-100).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

CONFIGS: dict[str, dict[str, Any]] = {
    "nirc": {},
    "no-guard": {"accuracy": False},
    "no-hw": {"no_hw_passes": True},
    "mse-w": {"weights": "mse"},
    "ada-w": {"weights": "adaround"},
    "bc": {"bias_correction": True},
    "no-cle": {"skip": ["equalize-cross-layer"]},
    "mse-a": {"method": "mse"},
    "pct-a": {"method": "percentile"},
}
# Reference quantizers, run from their own venv by benchmarks/reference_int8.py (same ONNX, same samples).
REFERENCES = ("tflite-converter", "onnx2tf")
TRAINED = ("digits_cnn32", "mobilenetv1_digits32", "vgg19_digits32", "resnet50_digits32")
ZOO = ("mobilenet_v2", "resnet18", "efficientnet_b0", "mobilenet_v3_large")
ORDER = {
    name: i
    for i, name in enumerate(
        ("digits_cnn", *TRAINED, "repvgg_narrow_64", "repvgg_a0_224", "repvgg_a0_224_nbn", *ZOO)
    )
}
ALL_CONFIGS = (*CONFIGS, *REFERENCES)


@dataclass(frozen=True, eq=False)
class Case:
    name: str
    model: Path
    calib: np.ndarray
    val: np.ndarray
    labels: np.ndarray | None
    note: str
    npu_samples: int = 0


def _noise(count: int, size: int, seed: int) -> np.ndarray:
    """N(0,1) images: the distribution the zoo exports' BatchNorm statistics were estimated on."""
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


def _crops(count: int, size: int, seed: int) -> np.ndarray:
    from export_repvgg import crops

    return crops(count, size, seed)


def cases(args: argparse.Namespace) -> tuple[list[Case], list[str]]:
    found: list[Case] = []
    skipped: list[str] = []
    digits = ROOT / "examples" / "digits_cnn.onnx"
    if digits.exists():
        calib = np.load(ROOT / "examples" / "digits_calib.npz")["input"][:16]
        val = np.load(ROOT / "examples" / "digits_val.npz")
        found.append(
            Case("digits_cnn", digits, calib, val["input"], val["labels"], "trained, real held-out digits", 64)
        )
    trained = Path(args.trained).expanduser()
    for name in TRAINED:
        path = trained / f"{name}.onnx"
        if not path.exists():
            skipped.append(f"{name}: not in {trained} (examples/train_small.py)")
            continue
        calib = np.load(trained / f"{name}_calib.npz")["input"][:16]
        val = np.load(trained / f"{name}_val.npz")
        found.append(
            Case(name, path, calib, val["input"], val["labels"], "trained on sklearn digits at 32x32 (not CIFAR)", 8)
        )
    fixture = ROOT / "tests" / "fixtures" / "accuracy" / "repvgg_narrow_64.onnx"
    found.append(
        Case("repvgg_narrow_64", fixture, _crops(16, 64, 7), _crops(16, 64, 8), None, "timm RepVGG blocks, training")
    )
    if args.repvgg_a0 and Path(args.repvgg_a0).exists():
        found.append(
            Case("repvgg_a0_224", Path(args.repvgg_a0), _crops(16, 224, 7), _crops(16, 224, 8), None,
                 "timm RepVGG-A0, training form")
        )
    else:
        skipped.append(f"repvgg_a0_224: no file (--repvgg-a0 {args.repvgg_a0})")
    if args.repvgg_a0_noise_bn and Path(args.repvgg_a0_noise_bn).exists():
        found.append(
            Case("repvgg_a0_224_nbn", Path(args.repvgg_a0_noise_bn), _noise(16, 224, 7), _noise(16, 224, 8), None,
                 "timm RepVGG-A0, training form, BN statistics and data N(0,1), as the zoo exports")
        )
    zoo = Path(args.zoo)
    for arch in ZOO:
        path = zoo / f"torchvision__{arch}__torchscript.onnx"
        if path.exists():
            found.append(
                Case(arch, path, _noise(16, 224, 7), _noise(16, 224, 8), None, "torchvision, BN stats and data N(0,1)")
            )
        else:
            skipped.append(f"{arch}: not in {zoo}")
    if args.models:
        wanted = set(args.models.split(","))
        found = [c for c in found if c.name in wanted]
    if args.val_count:
        n = args.val_count
        found = [replace(c, val=c.val[:n], labels=None if c.labels is None else c.labels[:n]) for c in found]
    return found, skipped


def measure(case: Case, config: dict[str, Any], work: Path) -> dict[str, Any]:
    import onnx

    from nirc.backend import CalibrationOptions, emit, load_samples
    from nirc.pipeline import optimize
    from nirc.validate import check_output, run_tflite
    from nirc.verify import run_onnx

    options = dict(config)
    weights = options.pop("weights", "max")
    bias_correction = options.pop("bias_correction", False)
    method = options.pop("method", "minmax")
    model = onnx.load(str(case.model))
    name = model.graph.input[0].name
    calib_path = work / f"{case.name}_calib.npz"
    np.savez(calib_path, **{name: case.calib})
    start = time.perf_counter()
    result = optimize(
        case.model,
        "ethos-u65",
        outdir=work / f"{case.name}_{len(list(work.iterdir()))}",
        calibration=CalibrationOptions(
            path=calib_path, count=16, weights=weights, bias_correction=bias_correction, method=method
        ),
        validate_npu="none",
        layer_report=False,
        require_fit=False,
        **options,
    )
    seconds = time.perf_counter() - start
    assert result.model is not None
    # The same emission again from the optimized model (deterministic): its TensorIO says how to feed it.
    calib = load_samples(result.model, CalibrationOptions(path=calib_path, count=16, method=method))
    tflite = emit(
        result.model, dtype="int8", calib=calib, method=method, weights=weights, bias_correction=bias_correction
    ).tflite
    if tflite.data != result.int8_tflite:
        raise SystemExit(f"{case.name}: re-emitted int8 TFLite differs from optimize()'s")
    feeds = [{name: sample[None].astype(np.float32)} for sample in case.val]
    reference = run_onnx(result.model, feeds)  # once per configuration: SNR and top-1 from the same runs
    produced = run_tflite(tflite, feeds)
    checks = [
        check_output(io, np.stack([run[i] for run in reference]), np.stack([run[i] for run in produced]))
        for i, io in enumerate(tflite.outputs)
    ]
    snr = min(c.snr_db for c in checks)
    top1_float = top1_int8 = agree = None
    if case.labels is not None or checks[0].top1_agreement is not None:
        ref = np.concatenate([run[0] for run in reference])
        out = np.concatenate([run[0] for run in produced])
        agree = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
        if case.labels is not None:
            top1_float = float(np.mean(ref.argmax(-1) == case.labels))
            top1_int8 = float(np.mean(out.argmax(-1) == case.labels))
    npu = None
    if case.npu_samples:
        # Vela's command stream executed in nirc's NPU model against LiteRT on the int8 TFLite: where they
        # agree bit for bit, the NPU's top-1 is the int8 top-1.
        from nirc.targets.ethos_u.npu_check import check_npu_artifact

        from nirc.plugin import load_registry

        target = load_registry().get_target("ethos-u65")
        stem = case.model.stem
        run = check_npu_artifact(
            "sim", target, result.artifacts[f"{stem}_vela.tflite"], result.artifacts[f"{stem}_int8.tflite"],
            tflite, feeds[: case.npu_samples], [],
        )
        if run is not None and "bit_exact_samples" in run:
            npu = f"{run['bit_exact_samples']}/{run['samples']}"
    report = result.report
    refused = sum(
        r["stats"].get("accuracy_refused", 0) + r["stats"].get("accuracy_guard.reverted", 0) for r in report["passes"]
    )
    fallback = sum(r["stats"].get("accuracy_fallback", 0) for r in report["passes"])
    guard = report["validation"].get("accuracy_guard") or {}
    return {
        "snr": snr,
        "agree": agree,
        "top1_float": top1_float,
        "top1_int8": top1_int8,
        "ms": (report["vela"] or {}).get("inference_time_ms"),
        "refused": refused,
        "fallback": fallback,
        "guard_s": guard.get("seconds"),
        "guard_n": guard.get("measurements"),
        "seconds": seconds,
        "npu": npu,
    }


def _reference_tflite(case: Case, tool: str, refdir: Path, tf_python: Path | None, work: Path) -> Path | None:
    """``refdir/<model>__<tool>.tflite``, made by reference_int8.py in the TF venv when missing."""
    import onnx

    path = refdir / f"{case.name}__{tool.replace('-', '_')}.tflite"
    note = path.with_suffix(".json")
    if not path.exists() and not note.exists() and tf_python is not None and tf_python.exists():
        name = onnx.load(str(case.model), load_external_data=False).graph.input[0].name
        calib = work / f"{case.name}_ref_calib.npz"
        np.savez(calib, **{name: case.calib})
        cmd = [str(tf_python), str(ROOT / "benchmarks" / "reference_int8.py"), str(case.model), str(calib),
               str(refdir), "--name", case.name, "--tools", tool.replace("-", "_")]
        log = refdir / f"{case.name}__{tool.replace('-', '_')}.log"
        refdir.mkdir(parents=True, exist_ok=True)
        with log.open("w", encoding="utf-8") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, env=_nice_env())
    return path if path.exists() else None


def _nice_env() -> dict[str, str]:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def run_reference(data: bytes, samples: np.ndarray) -> np.ndarray:
    """Run an int8 (or float-I/O) TFLite on NCHW samples: NHWC input, (de)quantized with its own parameters."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=data, num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    results = []
    for x in samples:
        x = x[None].astype(np.float32)
        if x.ndim == 4 and tuple(inp["shape"]) != x.shape:
            x = x.transpose(0, 2, 3, 1)
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            x = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        results.append(y.reshape(1, -1))
    return np.concatenate(results)


def measure_reference(
    case: Case, tool: str, refdir: Path, tf_python: Path | None, work: Path
) -> dict[str, Any] | None:
    from nirc.quant import snr_db
    from nirc.verify import run_onnx

    start = time.perf_counter()
    path = _reference_tflite(case, tool, refdir, tf_python, work)
    seconds = time.perf_counter() - start
    if path is None:
        return None
    import onnx

    name = onnx.load(str(case.model), load_external_data=False).graph.input[0].name
    feeds = [{name: sample[None].astype(np.float32)} for sample in case.val]
    ref = np.concatenate([run[0].reshape(1, -1) for run in run_onnx(onnx.load(str(case.model)), feeds)])
    out = run_reference(path.read_bytes(), case.val)
    top1_float = top1_int8 = None
    if case.labels is not None:
        top1_float = float(np.mean(ref.argmax(-1) == case.labels))
        top1_int8 = float(np.mean(out.argmax(-1) == case.labels))
    return {
        "snr": snr_db(ref, out),
        "agree": float(np.mean(ref.argmax(-1) == out.argmax(-1))),
        "top1_float": top1_float,
        "top1_int8": top1_int8,
        "ms": None,
        "refused": 0,
        "fallback": 0,
        "guard_s": None,
        "guard_n": None,
        "seconds": seconds,
        "npu": None,
    }


def _canonical(case: Case) -> tuple[Any, Any, list[dict[str, np.ndarray]]]:
    """The case's model after nirc's canonical passes (no guard, so no measured rewrites), its calibration
    set and its held-out feeds."""
    from nirc.ir import IRModel
    from nirc.pass_base import PassContext
    from nirc.pass_manager import PassManager
    from nirc.pipeline import select_passes
    from nirc.plugin import load_registry
    from nirc.quant import CalibrationSet

    registry = load_registry()
    target = registry.get_target("ethos-u65")
    model = IRModel.load(case.model)
    PassManager(select_passes(registry, target, no_hw_passes=True)).run(model, PassContext(target=target))
    name = model.to_proto().graph.input[0].name
    calib = CalibrationSet(tuple({name: x[None].astype(np.float32)} for x in case.calib), False, case.name)
    return model, calib, [{name: x[None].astype(np.float32)} for x in case.val]


def ptq_sweep(cases: Sequence[Case], out: Path) -> None:
    """Held-out int8 SNR of each model's canonical float graph (no hardware passes, no Vela) for every
    combination of activation range method, weight range and bias correction: which PTQ option to trust."""
    from nirc.backend import emit
    from nirc.validate import compare

    combos = [(m, w, b) for m in ("minmax", "percentile", "mse") for w in ("max", "mse") for b in (False, True)]
    lines = [
        "# PTQ options: held-out int8 SNR (dB) per activation range method, weight range and bias correction",
        "",
        "Generated by `python benchmarks/accuracy.py --ptq-sweep`. Each model after nirc's canonical passes "
        "(no hardware passes), calibrated on 16 samples, scored on the held-out ones (LiteRT int8 vs ORT float, "
        "worst output). Columns: `--calib-method` / `--weight-range` / `--bias-correction`.",
        "",
        "| model | " + " | ".join(f"{m} / {w} / {'bc' if b else '-'}" for m, w, b in combos) + " |",
        "|---|" + "---|" * len(combos),
    ]
    for case in cases:
        model, calib, feeds = _canonical(case)
        proto = model.to_proto()
        row = []
        for method, weights, bc in combos:
            tflite = emit(proto, dtype="int8", calib=calib, method=method, weights=weights, bias_correction=bc).tflite
            row.append(min(c.snr_db for c in compare(proto, tflite, feeds)))
        best = max(row)
        cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in row]
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
        print(case.name, [round(v, 2) for v in row], flush=True)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cle_sweep(cases: Sequence[Case], out: Path) -> None:
    """What equalize-cross-layer does to each model's canonical graph: pairs found, int8 SNR on the
    calibration samples (what the guard judges by) and on the held-out ones, with and without it."""
    import onnx
    from nirc.passes.equalize_cross_layer import EqualizeCrossLayerPass

    from nirc.accuracy import AccuracyGuard
    from nirc.backend import emit
    from nirc.pass_base import PassContext
    from nirc.plugin import load_registry
    from nirc.quant import CalibrationSet
    from nirc.validate import compare

    registry = load_registry()
    target = registry.get_target("ethos-u65")
    lines = [
        "# Cross-layer equalisation: int8 SNR (dB) of each model's canonical graph without / with it",
        "",
        "Generated by `python benchmarks/accuracy.py --cle-sweep`. nirc's canonical passes (no hardware "
        "passes), then `equalize-cross-layer` with `mode=always` (scales from the 16 calibration samples' "
        "activation ranges); int8 emitted with defaults (minmax, max weight ranges) and compared with ORT on "
        "the calibration samples (`calib`, what the pass's own guard judges by) and on the held-out ones. "
        "`kept` = what the default `mode=measured` decides (int8 SNR on the calibration samples must rise).",
        "",
        "| model | pairs | calib before | calib after | held-out before | held-out after | held-out gain | kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        model, calib, feeds = _canonical(case)
        before = model.to_proto()
        ctx = PassContext(target=target, calibration=calib)
        changed = EqualizeCrossLayerPass(mode="always").run(model, ctx)
        after: onnx.ModelProto = model.to_proto()
        pairs = ctx.stats.get("pairs", 0)
        guard = AccuracyGuard(calib)
        cal_b, cal_a = min(guard.snr(before).values()), min(guard.snr(after).values())

        def held_out(proto: onnx.ModelProto, calib: CalibrationSet, feeds: list[dict[str, np.ndarray]]) -> float:
            tflite = emit(proto, dtype="int8", calib=calib).tflite
            return min(c.snr_db for c in compare(proto, tflite, feeds))

        ho_b = held_out(before, calib, feeds)
        ho_a = held_out(after, calib, feeds) if changed else ho_b
        kept = "yes" if changed and cal_a > cal_b else "no"
        lines.append(
            f"| {case.name} | {pairs} | {cal_b:.2f} | {cal_a:.2f} | {ho_b:.2f} | {ho_a:.2f} | {ho_a - ho_b:+.2f} "
            f"| {kept} |"
        )
        print(lines[-1], flush=True)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")


NOTES = """
## Notes

* **Trained models on real data (issue 16).** `examples/train_small.py` trains the seed's CIFAR-shaped
  networks (the `examples/build_models.py` graphs, 10-class head) and the digits CNN on scikit-learn's real
  handwritten digits upscaled to 32x32 -- *not* CIFAR-100 -- and scores on 539 held-out digits. Float top-1:
  digits CNN 99.6% (10 epochs), MobileNetV1 94.4% (5), VGG19 97.2% (2), ResNet50 30.1% (1 epoch: undertrained,
  the shared CPU allowed no more in this session; its row is scored on the first 100 held-out digits only).
  Top-1 drop float -> int8 with nirc's defaults: digits CNN 32x32 +0.2 points, MobileNetV1 -0.2 (int8 one
  digit better), VGG19 0.0, ResNet50 0.0, 8x8 digits CNN 0.0: within the 0.5-point target. The NPU command stream equals
  LiteRT's int8 output bit for bit on the checked held-out digits (`NPU = int8`), so NPU top-1 = int8 top-1.
* **Reference quantizers.** The TensorFlow Lite converter (TF 2.21, full-integer PTQ) and onnx2tf (1.28.8,
  `-oiqt`, per-channel) get the same ONNX and the same 16 calibration samples. nirc minus the better of them:
  trained digits CNN 32x32 +1.29 dB, MobileNetV1 +0.42, ResNet50 +0.08, VGG19 -0.00 (29.500 vs 29.502),
  8x8 digits CNN -0.18; zoo models (random weights, N(0,1) data) MobileNetV2 +0.17, ResNet18 +0.10,
  EfficientNet-B0 +0.68, MobileNetV3-large -0.32 (its hardware passes cost 0.5 dB, inside the guard's
  tolerance; `no-hw` is +0.19).
  So the issue's SNR targets are **not met**: nirc is ahead of the better reference on 6 of 9 models, level
  on VGG19, behind on two, and +0.16 dB on average on the real architectures, not +2 dB. Without
  equalisation nirc's int8 is level with both (the same per-channel min/max scheme); the margins come from
  `equalize-cross-layer`. `--bias-correction` is the bigger lever on trained models (+2.3 to +3.1 dB on the
  digits CNNs, +0.1 on MobileNetV1) but stays opt-in (it costs RepVGG and MobileNetV2, `accuracy_ptq.md`).
  The converter path needs `tf_reference.py`'s ONNX -> TF translation, which lacks padded MaxPool, SiLU and
  HardSwish: its ResNet18, EfficientNet-B0 and MobileNetV3 cells are empty. The `nirc` rows of MobileNetV2
  and ResNet18 were re-measured with equalisation on by default (kept on ResNet18); the other zoo and RepVGG
  rows are from an earlier nirc, before it (equalisation is refused on EfficientNet-B0 and MobileNetV3).
* **Cross-layer equalisation** (`equalize-cross-layer`, `accuracy_cle.md`) is in the default pipeline and
  judges itself: with `--calib` it keeps the rewrite only when int8 SNR on the calibration samples rises.
  Held-out: +1.34 dB (digits CNN 32x32), +0.43 (MobileNetV1), +0.17 (ResNet18) kept; MobileNetV3-large
  (-2.02 dB), EfficientNet-B0 (-0.33), the 8x8 digits CNN (-0.51), VGG19 refused -- the calibration verdict
  had the sign of the held-out result on every swept model (MobileNetV2: -0.04 on calibration, +0.06
  held-out, refused). Its scales come from the calibration
  activations: Nagel's data-free weight-range rule lost 2 dB on the unit-test model, because with per-channel
  int8 weights only the per-tensor activation between the layers gains from balancing. Cost: one ORT pass
  over the 16 samples and one or two int8 measurements (1-9 s here).
* **Calibration vs held-out.** On the trained MobileNetV1 the int8 SNR on the 16 calibration samples is
  28.2 dB but 21.6-22.1 dB on held-out digits (all three quantizers): ranges from 16 samples clip held-out
  activations. More samples (`--calib-count`) is the next thing to measure.
* **Activation range methods** (`mse-a`, `pct-a`: `--calib-method mse` / `percentile` on top of the
  defaults; measured on the trained 32x32 models, held-out digits). MSE-optimal activation clipping gains
  +0.60 dB on the digits CNN but loses 0.22 on MobileNetV1 and 3.26 on VGG19; the 99.99th percentile loses
  0.9-4.7 dB everywhere. Neither becomes a default: min/max (the reference quantizers' choice) stays.

* **The accuracy guard (issue 16).** `repvgg_narrow_64` is the case it exists for: merging every RepVGG block
  (`no-guard`) is 49% faster than the branches (0.100 vs 0.197 ms) but loses 6.5 dB held-out SNR (21.59 ->
  15.10 dB). With the guard (`nirc`) 3 blocks stay merged, 3 fall back to the residual form (3x3 and 1x1
  merged, identity branch kept as a depthwise 1x1 conv added after it) and 3 are refused: 0.113 ms (87% of
  the speed-up kept) at 20.62 dB. Measured on the calibration set the guard holds the loss within 0.5 dB;
  on held-out data it is 1.0 dB here (the merged forms generalise slightly worse than the ranges suggest).
* **RepVGG-A0 at 224** (timm, training form) behaves the other way in both of our exports: the merged model
  is *more* accurate in int8 than the branches (10.6 vs 5.4 dB with BN statistics from photo crops; 10.8 vs
  9.7 dB with N(0,1) statistics), because the unmerged identity branch is an elementwise per-tensor int8 Mul
  whose per-channel BN scales span a wide range. The guard measures that, keeps all 22 merges and the 7.08 ms
  (vs 12.47 ms), at 3 int8 measurements (17-32 s of a 156-282 s compile). We could not reproduce the issue's
  33.9 -> 21.2 dB drop with timm's initialisation; the narrow fixture reproduces the effect (21.7 -> 17.7 dB
  on its calibration data).
* **Guard cost** is one int8 measurement (calibrate + emit + LiteRT on 16 samples) per guarded pass that
  changed the model, one per accepted tiling region, and ~2 log2(n) for n block rewrites when the first
  check fails: `guard n / s` above.
* **Random-weight networks**: zoo models are random-init with re-estimated BN; their int8 SNR falls by ~1-2 dB
  per layer whatever the options (chaotic propagation of any perturbation), so SNR is the only meaningful
  number there and "agree" is weak evidence. The trained digits CNN loses no top-1 (99.8% float and int8) and
  the compiled NPU command stream equals the int8 TFLite bit for bit on 64/64 held-out digits.
* **PTQ options** (`accuracy_ptq.md`, canonical graphs): `--bias-correction` is +2.3 dB on the digits CNN
  and +1.7 dB on ResNet18, about neutral on MobileNetV2 and EfficientNet-B0 (-0.1 / +0.0 dB) and -0.3 dB on
  the RepVGG fixture; `--weight-range mse` is within +-0.7 dB; the existing `--calib-method mse` is +2.5 dB
  on EfficientNet-B0, +0.7 on MobileNetV2, +0.5 on ResNet18 but -0.5 on the digits CNN. The best combination
  (`--calib-method mse --weight-range mse --bias-correction`) is the best column on the three zoo models
  (+0.8 / +2.6 / +2.7 dB) but not on digits or RepVGG, so none of them is made a default; in the full
  pipeline the guard's choices interact with them (`bc` on the RepVGG fixture: 18.7 dB).
* **Zoo models vs the issue's figures**: without hardware passes we measure MobileNetV2 13.6, EfficientNet-B0
  14.5, MobileNetV3-large 12.7, ResNet18 27.9 dB (issue: 13.4 / 13.7 / 11.4 / 28.4). The default pipeline is
  within the guard's tolerance of those on held-out data (-0.5 to +0.5 dB) and faster.
* **AdaRound** (`ada-w`, `--weight-range adaround`; `nirc` and `ada-w` rows re-measured with the same code on
  2026-12-07): +2.8 / +1.8 dB on the digits CNNs, +0.1 on MobileNetV1 and VGG19 at 32x32 (top-1 unchanged or
  -0.6 point on MobileNetV1), +0.1 / +0.8 / +0.1 / -0.5 dB on MobileNetV2 / ResNet18 / EfficientNet-B0 /
  MobileNetV3-large: opt-in, not a default. Rewrites are judged with nearest rounding: judged with AdaRound
  (which fits the guard's own samples) the digits VGG19 kept CLE for +0.95 dB in sample and lost 2.5 dB held
  out. The ResNet50 rows above are of an earlier export of the 1-epoch model (float top-1 0.36; today's file
  gives 0.30) and were not re-measured against the references.
* **Not measured**: 16-bit activations (another branch), a well-trained ResNet50 (the recipe's default is 1
  epoch; `--epochs` raises it).
"""


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary(rows: Sequence[tuple[str, str, str, dict[str, Any]]]) -> list[str]:
    """Per model: nirc (defaults) against the better reference quantizer, and its top-1 drop."""
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for name, config, _, m in rows:
        by_model.setdefault(name, {})[config] = m
    out = [
        "",
        "## nirc against the reference quantizers",
        "",
        "| model | nirc SNR dB | best of nirc configs | TF converter | onnx2tf | nirc - better reference dB "
        "| top-1 drop float->int8 (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, configs in by_model.items():
        nirc = configs.get("nirc")
        if nirc is None:
            continue
        refs = [configs[r]["snr"] for r in REFERENCES if r in configs]
        best_cfg = max((c for c in configs if c not in REFERENCES), key=lambda c: configs[c]["snr"])
        margin = f"{nirc['snr'] - max(refs):+.2f}" if refs else "-"
        drop = "-"
        if nirc["top1_float"] is not None:
            drop = f"{100 * (nirc['top1_float'] - nirc['top1_int8']):+.1f}"
        cells = [_fmt(configs.get(r, {}).get("snr"), ".2f") for r in REFERENCES]
        out.append(
            f"| {name} | {nirc['snr']:.2f} | {configs[best_cfg]['snr']:.2f} ({best_cfg}) | {' | '.join(cells)} "
            f"| {margin} | {drop} |"
        )
    return out


def write(rows: Sequence[tuple[str, str, str, dict[str, Any]]], skipped: Sequence[str], out: Path) -> None:
    lines = [
        "# int8 accuracy: nirc configurations (ethos-u65-256, Vela 5.2)",
        "",
        "Generated by `python benchmarks/accuracy.py` (rows accumulate across runs in `accuracy.jsonl`; "
        "`--models`/`--configs` pick subsets, as the 224x224 models take minutes per configuration). "
        "SNR = int8 (LiteRT, builtin kernels) vs float (ONNX Runtime) on held-out inputs, worst output. "
        "`nirc` = defaults (accuracy guard on, 0.5 dB); `no-guard` = `--no-accuracy-guard`; "
        "`no-hw` = `--no-hw-passes`; `mse-w` = defaults + `--weight-range mse`; "
        "`ada-w` = defaults + `--weight-range adaround`; "
        "`bc` = defaults + `--bias-correction`; `mse-a` / `pct-a` = defaults + `--calib-method mse` / `percentile`. "
        "`agree` = int8 arg-max equals float arg-max; `top-1` only for the trained digits CNN (real labels). "
        "`NPU = int8`: held-out inputs on which Vela's compiled command stream, run in nirc's NPU functional "
        "model, equals LiteRT on the int8 TFLite bit for bit (there the NPU's top-1 is the int8 top-1). "
        "`guard` = rewrites the guard refused (r) or replaced by their accuracy-preferred fallback (f), and the "
        "int8 measurements it made / their seconds. `no-cle` = defaults with `--skip-pass equalize-cross-layer`. "
        "`tflite-converter` / `onnx2tf` = the reference quantizers on the same ONNX and the same 16 calibration "
        "samples (`benchmarks/reference_int8.py` in a TensorFlow 2.21 venv; per-channel weights, int8 I/O), "
        "scored the same way (LiteRT builtin kernels vs ORT on the original model).",
        "",
        "| model | config | int8 SNR dB | agree | top-1 float / int8 | NPU = int8 | Vela ms | guard r/f | guard n / s "
        "| compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case_name, config, _, m in rows:
        top1 = "-" if m["top1_float"] is None else f"{m['top1_float']:.3f} / {m['top1_int8']:.3f}"
        guard = "-" if m["guard_n"] is None else f"{m['guard_n']} / {m['guard_s']:.1f}"
        refused = "-" if config in REFERENCES else f"{m['refused']}/{m['fallback']}"
        lines.append(
            f"| {case_name} | {config} | {m['snr']:.2f} | {_fmt(m['agree'], '.2f')} | {top1} | {m.get('npu') or '-'} "
            f"| {_fmt(m['ms'], '.3f')} "
            f"| {refused} | {guard} | {m['seconds']:.0f} |"
        )
    lines += summary(rows)
    notes = {name: note for name, _, note, _ in rows}
    lines += ["", "Models: " + "; ".join(f"`{name}`: {note}" for name, note in notes.items()) + "."]
    skipped = [s for s in skipped if s.split(":")[0] not in notes]  # measured in an earlier run
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    lines.append(NOTES)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.md")
    parser.add_argument("--models", help="comma-separated subset")
    parser.add_argument(
        "--configs", default=",".join(ALL_CONFIGS), help="comma-separated subset of " + ",".join(ALL_CONFIGS)
    )
    parser.add_argument("--trained", default="~/.cache/nirc-bench/trained", help="examples/train_small.py --outdir")
    parser.add_argument(
        "--references", default="~/.cache/nirc-bench/reference", help="reference int8 TFLites (made when missing)"
    )
    parser.add_argument(
        "--tf-python", default="/work/tfenv/bin/python", help="python of the TF venv (benchmarks/reference_int8.py)"
    )
    parser.add_argument("--zoo", default="/work/zoo_exports")
    parser.add_argument("--repvgg-a0", default="/tmp/repvgg_a0_224.onnx", help="export_repvgg.py --model repvgg_a0")
    parser.add_argument("--repvgg-a0-noise-bn", help="the same with --bn-data noise")
    parser.add_argument("--val-count", type=int, help="score on the first N held-out samples only (big models)")
    parser.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs")
    parser.add_argument("--ptq-sweep", action="store_true", help="only the PTQ option sweep (accuracy_ptq.md)")
    parser.add_argument("--cle-sweep", action="store_true", help="only the equalisation sweep (accuracy_cle.md)")
    parser.add_argument("--rewrite", action="store_true", help="rebuild the table from accuracy.jsonl, measure nothing")
    args = parser.parse_args()
    found, skipped = cases(args)
    if args.rewrite:
        log = args.output.with_suffix(".jsonl")
        rows_ = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        write([(r["model"], r["config"], r["note"], r["m"]) for r in rows_], [], args.output)
        return
    if args.ptq_sweep:
        ptq_sweep(found, args.output.with_name("accuracy_ptq.md"))
        return
    if args.cle_sweep:
        cle_sweep(found, args.output.with_name("accuracy_cle.md"))
        return
    log = args.output.with_suffix(".jsonl")
    rows: dict[tuple[str, str], tuple[str, str, str, dict[str, Any]]] = {}
    if log.exists() and not args.fresh:
        for line in log.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["config"] in ALL_CONFIGS:  # configurations since dropped are not kept
                rows[row["model"], row["config"]] = (row["model"], row["config"], row["note"], row["m"])
    with tempfile.TemporaryDirectory() as tmp:
        for case in found:
            for config in args.configs.split(","):
                if config in REFERENCES:
                    refdir = Path(args.references).expanduser()
                    ref = measure_reference(case, config, refdir, Path(args.tf_python), Path(tmp))
                    if ref is None:
                        print(case.name, config, "not available (see", refdir, ")", flush=True)
                        continue
                    m = ref
                else:
                    m = measure(case, CONFIGS[config], Path(tmp))
                rows[case.name, config] = (case.name, config, case.note, m)
                print(case.name, config, m, flush=True)
                ordered = sorted(rows.values(), key=lambda r: (ORDER.get(r[0], 99), r[0], ALL_CONFIGS.index(r[1])))
                log.write_text(
                    "".join(json.dumps({"model": a, "config": b, "note": c, "m": d}) + "\n" for a, b, c, d in ordered),
                    encoding="utf-8",
                )
                write(ordered, skipped, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
