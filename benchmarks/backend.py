"""Backend benchmark: end-to-end `nirc optimize` time, int8 accuracy per range method, Vela estimate.

Usage: python benchmarks/backend.py [-o benchmarks/results/backend.md] [models...]

For each example model (built by examples/build_models.py, random weights):
- wall time of the whole `optimize` (passes, calibration, emission, validation, Vela);
- int8 accuracy for each calibration method, measured on HELD-OUT inputs (ranges from
  16 calibration samples, SNR/top-1 on 16 other samples) so the method choice is not
  judged on the data it was fitted to;
- Vela's estimate (ethos-u65-256, Dedicated_Sram_384KB) and the NPU/CPU op split.
Inputs are standard-normal noise: the models have random weights, so there is no
"real" input distribution to prefer. Top-1 agreement on random-weight classifiers is
weak evidence (their outputs barely depend on the input); SNR is the main metric.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from nirc.backend import CalibrationOptions, emit
from nirc.ir import IRModel
from nirc.pipeline import optimize, run_passes, select_passes
from nirc.plugin import load_registry
from nirc.quant import CalibrationSet
from nirc.validate import compare

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = (
    "tiny_cnn",
    "mobilenetv1_cifar100",
    "vgg19_cifar100",
    "resnet50_cifar100",
    "mobilenetv2_224",
    "vgg19_224_10",
)
METHODS = ("minmax", "percentile", "mse")


def _examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_build", ROOT / "examples" / "build_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _samples(shape: tuple[int, ...], name: str, count: int, seed: int) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    samples = tuple({name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count))
    return CalibrationSet(samples, synthetic=False, source=f"normal(seed={seed})")


def bench_model(name: str, workdir: Path) -> dict[str, object]:
    proto = _examples().build(name)
    src = workdir / f"{name}.onnx"
    onnx.save(proto, str(src))
    value = proto.graph.input[0]
    shape = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
    calib = _samples(shape, value.name, 16, seed=1)
    held_out = _samples(shape, value.name, 16, seed=2)
    calib_path = workdir / f"{name}_calib.npy"
    np.save(calib_path, np.stack([s[value.name] for s in calib.samples]))

    start = time.perf_counter()
    result = optimize(src, "ethos-u65", outdir=workdir / f"{name}_out", calibration=CalibrationOptions(calib_path))
    wall = time.perf_counter() - start

    registry = load_registry()
    target = registry.get_target("ethos-u65")
    model = IRModel.load(src)
    run_passes(model, target, select_passes(registry, target))
    optimized = model.to_proto()
    accuracy = {}
    for method in METHODS:
        t0 = time.perf_counter()
        emitted = emit(optimized, dtype="int8", calib=calib, method=method)  # type: ignore[arg-type]
        emit_s = time.perf_counter() - t0
        (check,) = compare(optimized, emitted.tflite, list(held_out.samples))
        accuracy[method] = (check.snr_db, check.top1_agreement, emit_s)
    vela = result.report["vela"]
    return {
        "name": name,
        "wall_s": wall,
        "accuracy": accuracy,
        "vela_ms": vela["inference_time_ms"],
        "npu_ops": vela["npu_ops"],
        "cpu_ops": vela["cpu_ops"],
        "fits": result.report["fits"]["platform"]["message"],
    }


def to_markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "# Backend benchmark (ethos-u65-256, Ethos_U65_High_End, Dedicated_Sram_384KB)",
        "",
        "int8 SNR (dB) of LiteRT int8 vs ONNX Runtime float on 16 held-out inputs; ranges from 16 other inputs.",
        "",
        "| model | optimize wall (s) | SNR minmax | SNR percentile | SNR mse | top-1 agr. (minmax) "
        "| calib+emit s (mse) | Vela ms | NPU ops | CPU ops | platform |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r["accuracy"]
        assert isinstance(acc, dict)
        top1 = acc["minmax"][1]
        lines.append(
            f"| {r['name']} | {r['wall_s']:.1f} | {acc['minmax'][0]:.2f} | {acc['percentile'][0]:.2f} "
            f"| {acc['mse'][0]:.2f} | {'-' if top1 is None else f'{top1:.2f}'} | {acc['mse'][2]:.1f} "
            f"| {r['vela_ms']:.3f} | {r['npu_ops']} | {r['cpu_ops']} | {r['fits']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "backend.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench_model(name, Path(tmp)))
            print(f"{name}: done in {rows[-1]['wall_s']:.1f}s", flush=True)
    text = to_markdown(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
