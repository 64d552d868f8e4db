"""nirc vs the ExecuTorch Arm backend on the same modules, weights and calibration (issue 15).

Three stages, each runnable in its own venv:

``export`` (a venv with ExecuTorch, e.g. ``pip install -e ".[executorch]"`` -- see below)
    For each model: build it with seeded random init, re-estimate BatchNorm statistics on
    natural-image-like data, save the weights, the 16 calibration samples and 16 held-out
    samples, export the same module to ONNX (TorchScript exporter, opset 17) for nirc, and run
    ExecuTorch's Arm flow: ``EthosUQuantizer`` (symmetric per-channel int8) calibrated on the same
    16 samples, ``EthosUPartitioner``, ``EthosUCompileSpec("ethos-u65-256",
    "Ethos_U65_High_End", "Dedicated_Sram_384KB")``.  Vela's summary CSV and per-layer CSV of
    every delegated partition are kept.  Results are cached in
    ``benchmarks/results/vs_executorch_et.json``; the ONNX and sample files stay in the work
    directory (``$NIRC_BENCH_DIR/vs_executorch``, default ``~/.cache/nirc-bench/vs_executorch``).
``nirc`` (nirc's venv; cheap to rerun on later nirc versions)
    ``nirc optimize MODEL.onnx --target ethos-u65 --calib calib.npy --validate none`` with the
    default pipeline and with ``--no-hw-passes``; the int8 TFLite is then run in LiteRT on the
    held-out samples.  Results: ``benchmarks/results/vs_executorch_nirc.json``.
``table``
    Writes ``benchmarks/results/vs_executorch.md`` and the ExecuTorch section of BENCHMARKS.md.

Usage::

    python3 -m venv /work/etenv
    /work/etenv/bin/pip install torch==2.14.1 torchvision==0.29.1 executorch==1.5.1 \\
        tosa-tools==2026.5.0 ml_dtypes==0.5.1 ethos-u-vela==5.2.0 onnx onnxscript ultralytics
    /work/etenv/bin/python benchmarks/vs_executorch.py export [models...]
    .venv/bin/python benchmarks/vs_executorch.py nirc [models...]
    .venv/bin/python benchmarks/vs_executorch.py table

(``executorch[ethos-u]`` pins ethos-u-vela 5.1.0; installing it without the extra and adding
Vela 5.2.0 keeps both compilers on the same Vela.)

Inputs ("natural-image-like", deterministic): dead-leaves images -- 1200 opaque discs with
power-law radii (density ~ r^-3, the scale-invariant occlusion model of natural images) in
unsaturated random colours, drawn back to front, plus 1/f amplitude-spectrum texture noise (natural images'
power spectrum falls as 1/f^2) -- in [0, 1], one numpy seed per image: calibration seeds 0..15,
held-out seeds 1000..1015, BatchNorm re-estimation seeds 5000+.  Classifiers get ImageNet
mean/std normalisation; the YOLO detector gets the [0, 1] image as ultralytics feeds it.

BatchNorm re-estimation: ``reset_running_stats()``, ``momentum=None`` (cumulative average),
only the BatchNorm modules in train mode (dropout and stochastic depth stay in eval mode so they
do not distort the statistics), 32 forward passes of 8 images, then eval.

int8 SNR (dB, over all outputs of the 16 held-out samples, vs the float PyTorch module):
ExecuTorch -- the TOSA int8 graph that ExecuTorch hands to Vela, executed by the TOSA reference
model (``tosa_reference_model``, integer-exact), with the CPU-side input quantize / output
dequantize done here with the delegate's own scales; also the PT2E fake-quantized module
(``convert_pt2e``) in PyTorch float.  nirc -- its int8 TFLite in LiteRT (builtin kernels), or when
Vela read the TOSA form, that TOSA graph in the TOSA reference model (what the artifact computes).
The NPU runs Vela's command stream; both of these are the int8 graphs Vela compiled.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ET_JSON = RESULTS / "vs_executorch_et.json"
NIRC_JSON = RESULTS / "vs_executorch_nirc.json"
TABLE_MD = RESULTS / "vs_executorch.md"
VELA_DIR = RESULTS / "vs_executorch"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
SECTION_BEGIN = "<!-- vs_executorch:begin -->"
SECTION_END = "<!-- vs_executorch:end -->"

ACCELERATOR = "ethos-u65-256"
SYSTEM_CONFIG = "Ethos_U65_High_End"
MEMORY_MODE = "Dedicated_Sram_384KB"
NIRC_TARGET = "ethos-u65"

CALIB_SEEDS = range(16)
HELDOUT_SEEDS = range(1000, 1016)
BN_SEED0 = 5000
BN_PASSES = 32
BN_BATCH = 8
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "torchvision" or "ultralytics"
    size: int  # square input side
    builder: str  # torchvision function name or ultralytics model yaml
    imagenet_norm: bool


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("mobilenet_v2", "torchvision", 224, "mobilenet_v2", True),
    ModelSpec("mobilenet_v3_small", "torchvision", 224, "mobilenet_v3_small", True),
    ModelSpec("mobilenet_v3_large", "torchvision", 224, "mobilenet_v3_large", True),
    ModelSpec("efficientnet_b0", "torchvision", 224, "efficientnet_b0", True),
    ModelSpec("resnet18", "torchvision", 224, "resnet18", True),
    ModelSpec("shufflenet_v2_x1_0", "torchvision", 224, "shufflenet_v2_x1_0", True),
    ModelSpec("yolov8n_320", "ultralytics", 320, "yolov8n.yaml", False),
)
BY_NAME = {m.name: m for m in MODELS}


def work_dir() -> Path:
    base = Path(os.environ.get("NIRC_BENCH_DIR", "~/.cache/nirc-bench")).expanduser()
    return base / "vs_executorch"


# --------------------------------------------------------------------------- inputs


def dead_leaves_image(seed: int, size: int) -> np.ndarray:
    """One natural-image-like RGB image in [0, 1], shape (3, size, size), from one seed."""
    rng = np.random.default_rng(seed)
    img = np.empty((3, size, size), dtype=np.float32)
    img[:] = rng.uniform(0.0, 1.0, size=(3, 1, 1))
    r_min, r_max = 0.015 * size, 0.4 * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Radii with density ~ r^-3 (inverse-CDF sampling), drawn back to front until the image is
    # covered several times; colours: a grey level with a mild tint (natural colours are unsaturated).
    for _ in range(1200):
        u = rng.uniform()
        r = 1.0 / math.sqrt(u / r_max**2 + (1.0 - u) / r_min**2)
        cx, cy = rng.uniform(-r, size + r, size=2)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        mask = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 < r * r
        colour = rng.uniform(0.05, 0.95) * (1.0 + 0.35 * rng.standard_normal(3))
        img[:, y0:y1, x0:x1][:, mask] = np.clip(colour, 0.0, 1.0)[:, None]
    # 1/f amplitude-spectrum texture, luminance-dominated.
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(size, size))
    tex = np.real(np.fft.ifft2(amp * np.exp(1j * phase))).astype(np.float32)
    tex /= float(np.std(tex)) + 1e-6
    img += 0.06 * tex[None] * rng.uniform(0.7, 1.0, size=(3, 1, 1)).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _images(seeds: tuple[int, ...], size: int) -> np.ndarray:
    """Generated once per process: the models of one size share their inputs."""
    images = np.stack([dead_leaves_image(s, size) for s in seeds])
    images.flags.writeable = False
    return images


def model_inputs(spec: ModelSpec, seeds: Sequence[int]) -> np.ndarray:
    images = _images(tuple(seeds), spec.size)
    if spec.imagenet_norm:
        images = (images - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]
    return images.astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    r = np.asarray(ref, dtype=np.float64).ravel()
    o = np.asarray(out, dtype=np.float64).ravel()
    noise = float(np.sum((r - o) ** 2))
    return math.inf if noise == 0.0 else 10.0 * math.log10(float(np.sum(r**2)) / noise)


def top1(ref: np.ndarray, out: np.ndarray) -> float | None:
    """Fraction of samples with the same arg-max class (classifiers only: 2-D outputs)."""
    if ref.ndim != 2:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def save_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- Vela CSVs


def read_vela_summary(path: Path) -> dict[str, float]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row = rows[0]
    return {
        "inference_time_ms": float(row["inference_time"]) * 1e3,
        "cycles_total": float(row["cycles_total"]),
        "sram_used_kib": float(row["sram_memory_used"]),
        "dram_used_kib": float(row["dram_memory_used"]),
        "dram_feature_map_read_bytes": float(row["dram_feature_map_read_bytes"]),
        "dram_feature_map_write_bytes": float(row["dram_feature_map_write_bytes"]),
        "dram_weight_bytes": float(row["dram_weight_read_bytes"]),
        "nn_macs": float(row["nn_macs"]),
    }


def combine_partitions(parts: list[dict[str, float]]) -> dict[str, float]:
    """Partitions run one after another: times, cycles and traffic add; memory is the max."""
    out: dict[str, float] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = max(values) if key in ("sram_used_kib", "dram_used_kib") else sum(values)
    return out


# --------------------------------------------------------------------------- stage (a)


def _build_module(spec: ModelSpec) -> Any:
    import torch

    torch.manual_seed(0)
    if spec.family == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec.builder)(weights=None)
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(spec.builder, nc=80, verbose=False)
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format, m.dynamic = True, "onnx", False
    return model


def _reestimate_batchnorm(model: Any, spec: ModelSpec) -> None:
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for i in range(BN_PASSES):
            seeds = range(BN_SEED0 + i * BN_BATCH, BN_SEED0 + (i + 1) * BN_BATCH)
            model(torch.from_numpy(model_inputs(spec, seeds)))
    model.eval()


def _forward_np(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        outs = [module(torch.from_numpy(x[i : i + 1])) for i in range(len(x))]
    return np.concatenate([(o[0] if isinstance(o, (tuple, list)) else o).numpy() for o in outs])


class _VelaCapture:
    """Wraps ExecuTorch's in-process Vela call to keep each partition's TOSA graph, CSVs and log."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.partitions: list[Path] = []

    def __enter__(self) -> _VelaCapture:
        import contextlib
        import io

        from executorch.backends.arm import arm_vela

        self._module = arm_vela.vela
        self._real_main = arm_vela.vela.main
        capture = self

        def main(argv: list[str]) -> Any:
            buf = io.StringIO()
            argv = [a for a in argv if a]
            with contextlib.redirect_stdout(buf):
                rc = capture._real_main(argv)
            part = capture.out_dir / f"partition{len(capture.partitions)}"
            part.mkdir(parents=True, exist_ok=True)
            tosa = Path(argv[-1])
            outdir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--output-dir=")))
            shutil.copy(tosa, part / "out.tosa")
            for f in outdir.glob("*.csv"):
                shutil.copy(f, part / f.name)
            (part / "vela_argv.txt").write_text(" ".join(argv[:-2]) + "\n", encoding="utf-8")
            (part / "vela_log.txt").write_text(buf.getvalue(), encoding="utf-8")
            capture.partitions.append(part)
            return rc

        self._module.main = main
        return self

    def __exit__(self, *exc: object) -> None:
        self._module.main = self._real_main


def _is_delegate_compile(partition: Path) -> bool:
    return f"--accelerator-config={ACCELERATOR}" in (partition / "vela_argv.txt").read_text(encoding="utf-8").split()


def _op_name(target: object) -> str:
    """``aten.relu.default`` -> ``relu``; ``quantized_decomposed.quantize_per_tensor.default`` -> the middle."""
    name = getattr(target, "__name__", str(target))
    parts = [p for p in str(name).replace("::", ".").split(".") if p not in ("aten", "default", "out", "Tensor")]
    return parts[-1] if parts else str(name)


def _tosa_io_quant(edge_program: Any) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    """Scales/zero points of the quantize ops feeding the delegate and the dequantize ops after it."""
    graph = edge_program.graph_module.graph
    ins, outs = [], []
    for node in graph.nodes:
        name = str(node.target)
        if node.op != "call_function":
            continue
        if "quantize_per_tensor" in name and "dequantize" not in name:
            ins.append((float(node.args[1]), int(node.args[2])))
        elif "dequantize_per_tensor" in name:
            outs.append((float(node.args[1]), int(node.args[2])))
    return ins, outs


def _run_tosa(tosa_path: Path, x_q: np.ndarray) -> np.ndarray | None:
    import tosa_reference_model as ref

    outputs, status = ref.run(tosa_path.read_bytes(), [x_q], verbosity="NONE")
    if status != ref.GraphStatus.TOSA_VALID:
        return None
    return np.asarray(outputs[0])


def _tosa_outputs(
    tosa_path: Path, x: np.ndarray, q_in: tuple[float, int], q_out: tuple[float, int], out_shape: tuple[int, ...]
) -> np.ndarray | None:
    """Float outputs of the TOSA int8 graph; input quantized, output dequantized with the delegate's scales."""
    results = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        q = np.clip(np.round(xi / q_in[0]) + q_in[1], -128, 127).astype(np.int8)
        y = _run_tosa(tosa_path, q)
        if y is None and q.ndim == 4:
            y = _run_tosa(tosa_path, np.ascontiguousarray(q.transpose(0, 2, 3, 1)))
        if y is None:
            return None
        y = (y.astype(np.float32) - q_out[1]) * q_out[0]
        if y.shape != out_shape and y.size == int(np.prod(out_shape)):
            y = y.reshape(out_shape)
        results.append(y)
    return np.concatenate(results)


def export_one(spec: ModelSpec) -> dict[str, Any]:
    import torch
    from executorch.backends.arm.ethosu import EthosUCompileSpec, EthosUPartitioner
    from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.version import __version__ as et_version
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    d = work_dir() / spec.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    model = _build_module(spec)
    _reestimate_batchnorm(model, spec)
    calib = model_inputs(spec, CALIB_SEEDS)
    heldout = model_inputs(spec, HELDOUT_SEEDS)
    np.save(d / "calib.npy", calib)
    np.save(d / "heldout.npy", heldout)
    torch.save(model.state_dict(), d / "weights.pt")
    ref = _forward_np(model, heldout)
    np.save(d / "heldout_ref.npy", ref)
    onnx_path = d / f"{spec.name}.onnx"
    example = (torch.from_numpy(calib[:1]),)
    torch.onnx.export(
        model, example, str(onnx_path), opset_version=17, dynamo=False, input_names=["input"], output_names=["output"]
    )
    print(f"{spec.name}: built, BN re-estimated, ONNX exported in {time.perf_counter() - t0:.0f} s", flush=True)

    compile_spec = EthosUCompileSpec(
        ACCELERATOR, system_config=SYSTEM_CONFIG, memory_mode=MEMORY_MODE, extra_flags=["--verbose-performance"]
    )
    start = time.perf_counter()
    graph = torch.export.export(model, example).module()
    quantizer = EthosUQuantizer(compile_spec)
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i : i + 1]))
    quantized = convert_pt2e(prepared)
    with _VelaCapture(d / "et") as capture:
        edge = to_edge_transform_and_lower(
            torch.export.export(quantized, example),
            partitioner=[EthosUPartitioner(compile_spec)],
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
        # The ops left outside the delegates, before memory planning adds its alloc nodes.
        ep = edge.exported_program()
        q_in, q_out = _tosa_io_quant(ep)
        cpu_ops = Counter(
            _op_name(n.target)
            for n in ep.graph_module.graph.nodes
            if n.op == "call_function" and _op_name(n.target) not in ("executorch_call_delegate", "getitem")
        )
        program = edge.to_executorch()
    compile_s = time.perf_counter() - start
    (d / f"{spec.name}.pte").write_bytes(program.buffer)
    # ExecuTorch also calls Vela to probe U55 permute support (decompose_permute_for_u55_pass, with
    # the U55 defaults): only the calls with the delegate's accelerator compile the model.
    delegates = [p for p in capture.partitions if _is_delegate_compile(p)]
    parts = [read_vela_summary(next(p.glob("*summary*.csv"))) for p in delegates]
    vela = combine_partitions(parts)
    dest = VELA_DIR / spec.name
    shutil.rmtree(dest, ignore_errors=True)
    for p in delegates:
        (dest / p.name).mkdir(parents=True)
        for f in p.glob("*.csv"):
            shutil.copy(f, dest / p.name / f"executorch_{f.name}")

    snr: dict[str, Any] = {}
    fake = _forward_np(quantized, heldout)
    snr["pt2e_fake_quant_db"] = snr_db(ref, fake)
    snr["pt2e_fake_quant_top1"] = top1(ref, fake)
    tosa_note = None
    if len(delegates) == 1 and len(q_in) == 1 and len(q_out) == 1:
        tosa_out = _tosa_outputs(delegates[0] / "out.tosa", heldout, q_in[0], q_out[0], (1, *ref.shape[1:]))
        if tosa_out is not None and tosa_out.shape == ref.shape:
            snr["tosa_int8_db"] = snr_db(ref, tosa_out)
            snr["tosa_int8_top1"] = top1(ref, tosa_out)
        else:
            tosa_note = "TOSA reference model run failed or output layout not recognised"
    else:
        tosa_note = f"{len(delegates)} partitions, {len(q_in)} input / {len(q_out)} output q-ops"
    if tosa_note:
        snr["tosa_note"] = tosa_note
    print(f"{spec.name}: ExecuTorch {vela['inference_time_ms']:.3f} ms, {compile_s:.0f} s, SNR {snr}", flush=True)
    return {
        "name": spec.name,
        "input_shape": list(calib.shape[1:]),
        "onnx_sha256": sha256(onnx_path),
        "calib_sha256": sha256(d / "calib.npy"),
        "heldout_sha256": sha256(d / "heldout.npy"),
        "executorch": {
            "version": et_version,
            "vela_version": _vela_version(),
            "torch_version": torch.__version__,
            "partitions": len(parts),
            "vela": vela,
            "vela_per_partition": parts,
            "cpu_ops": dict(sorted(cpu_ops.items())),
            "compile_s": round(compile_s, 1),
            "snr": snr,
        },
    }


def _vela_version() -> str:
    from importlib.metadata import version

    return version("ethos-u-vela")


def stage_export(names: Sequence[str]) -> None:
    for name in names:
        row = export_one(BY_NAME[name])
        data = load_json(ET_JSON)  # re-read: saved after each model, a later failure keeps earlier results
        data[name] = row
        save_json(ET_JSON, data)


# --------------------------------------------------------------------------- stage (b)


def _nirc_int8_outputs(tflite_path: Path, onnx_path: Path, x: np.ndarray, tosa: Path | None = None) -> np.ndarray:
    """LiteRT (builtin kernels) on nirc's int8 TFLite; NCHW float in, ONNX-layout float out.

    ``tosa``: the int8 outputs come from the TOSA graph of a TOSA-form artifact instead (the TOSA
    reference model, then a split model's TFLite part), what that artifact computes.
    """
    import onnx
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    proto = onnx.load(str(onnx_path), load_external_data=False)
    out_shape = tuple(d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim)
    interp = Interpreter(
        model_path=str(tflite_path),
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interp.allocate_tensors()
    (inp,), (outp,) = interp.get_input_details(), interp.get_output_details()
    results = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        if tuple(inp["shape"]) != xi.shape:
            xi = xi.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        if tuple(inp["shape"]) != xi.shape:
            raise SystemExit(f"{tflite_path}: input shape {tuple(inp['shape'])} does not match {x.shape[1:]}")
        scale, zp = inp["quantization"]
        if inp["dtype"] == np.int8:
            xi = np.clip(np.round(xi / scale) + zp, -128, 127).astype(np.int8)
        if tosa is None:
            interp.set_tensor(inp["index"], np.ascontiguousarray(xi))
            interp.invoke()
            y = interp.get_tensor(outp["index"]).astype(np.float32)
        else:
            from nirc.tosa.artifact import load
            from nirc.tosa.route import run_graph

            y = run_graph(load(tosa), [np.ascontiguousarray(xi)])[0].reshape(outp["shape"]).astype(np.float32)
        oscale, ozp = outp["quantization"]
        if outp["dtype"] == np.int8:
            y = (y - ozp) * oscale
        if y.shape != out_shape:
            # The output in TFLite layout: channels moved last (NHWC or N,L,C).
            y = np.moveaxis(y, -1, 1)
        if y.shape != out_shape:
            raise SystemExit(f"{tflite_path}: output shape {y.shape} does not match ONNX {out_shape}")
        results.append(y)
    return np.concatenate(results)


def _onnx_vs_torch(d: Path, onnx_path: Path) -> float:
    """ONNX Runtime on the exported ONNX vs the PyTorch module: both compilers start from the same function."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.load(d / "heldout.npy")
    y = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(len(x))])
    return snr_db(np.load(d / "heldout_ref.npy"), y)


VARIANT_FLAGS: dict[str, tuple[str, ...]] = {
    "full": ("--npu-format", "tflite"),
    "tosa": ("--npu-format", "auto"),
    "base": ("--no-hw-passes", "--npu-format", "tflite"),
}
"""nirc configurations per model: the pipeline with Vela reading the int8 TFLite, the default (Vela reads
TOSA where its estimate says so), the TFLite baseline without the hardware passes."""

VARIANT_LABELS = (
    ("full", "nirc --npu-format tflite"),
    ("tosa", "nirc (default: --npu-format auto)"),
    ("base", "nirc --no-hw-passes --npu-format tflite"),
)


def nirc_one(name: str, nirc_exe: str, variant: str) -> dict[str, Any]:
    d = work_dir() / name
    onnx_path = d / f"{name}.onnx"
    out = d / f"nirc_{variant}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        nirc_exe,
        "optimize",
        str(onnx_path),
        "--target",
        NIRC_TARGET,
        "-o",
        str(out),
        "--calib",
        str(d / "calib.npy"),
        "--validate",
        "none",
    ]
    cmd.extend(VARIANT_FLAGS[variant])
    # A fresh Vela cost cache per run: compile seconds are a cold compile, as ExecuTorch's are.
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        env = {**os.environ, "NIRC_CACHE_DIR": cache}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        seconds = time.perf_counter() - start
    if proc.returncode not in (0, 4):  # 4: does not fit the platform (artifacts are still written)
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        return {"error": f"exit {proc.returncode}: {' '.join(last)}", "compile_s": round(seconds, 1)}
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    vela = report["vela"]
    ref = np.load(d / "heldout_ref.npy")
    y = _nirc_int8_outputs(out / f"{name}_int8.tflite", onnx_path, np.load(d / "heldout.npy"))
    keep = (
        "inference_time_ms",
        "cycles_total",
        "sram_used_kib",
        "dram_used_kib",
        "dram_feature_map_read_bytes",
        "dram_feature_map_write_bytes",
        "dram_weight_bytes",
        "nn_macs",
        "npu_ops",
        "cpu_ops",
    )
    dest = VELA_DIR / name / f"nirc_{variant}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in (out / "vela").glob("*.csv"):
        shutil.copy(f, dest / f.name)
    npu_format = report.get("npu_format", {}).get("format", "tflite")
    if npu_format == "tosa":
        # What the NPU computes is the TOSA graph (one TABLE per activation), not the int8 TFLite:
        # the same held-out inputs through the TOSA reference model (seconds per input).
        y = _nirc_int8_outputs(
            out / f"{name}_int8.tflite", onnx_path, np.load(d / "heldout.npy"), out / report["npu_format"]["tosa_file"]
        )
    snr_heldout, top1_heldout = snr_db(ref, y), top1(ref, y)
    return {
        "npu_format": npu_format,
        "nirc_version": report["nirc_version"],
        "vela_version": vela.get("vela_version"),
        "vela": {k: vela[k] for k in keep},
        "cpu_op_list": [op["op_type"] for op in vela.get("cpu_op_list", [])],
        "passes_changed": [p["name"] for p in report["passes"] if p["changed"]],
        "input_layout_changes": report.get("input_layout_changes"),
        "compile_s": round(seconds, 1),
        "snr_heldout_db": snr_heldout,
        "top1_heldout": top1_heldout,
        "fits": report["fits"]["platform"]["message"],
    }


def stage_nirc(names: Sequence[str], variants: Sequence[str] = tuple(VARIANT_FLAGS)) -> None:
    """Compile ``names`` with nirc; ``variants`` re-measured, the others' saved rows kept."""
    nirc_exe = str(Path(sys.executable).with_name("nirc"))
    et = load_json(ET_JSON)
    data = load_json(NIRC_JSON)
    for name in names:
        d = work_dir() / name
        onnx_path = d / f"{name}.onnx"
        if not onnx_path.is_file():
            print(f"{name}: no {onnx_path}; run the export stage first", file=sys.stderr)
            continue
        if name in et and et[name]["onnx_sha256"] != sha256(onnx_path):
            print(f"{name}: {onnx_path} is not the file the ExecuTorch results were made with", file=sys.stderr)
            continue
        kept = {v: r for v, r in load_json(NIRC_JSON).get(name, {}).items() if v in VARIANT_FLAGS}
        row: dict[str, Any] = {
            variant: nirc_one(name, nirc_exe, variant) if variant in variants or variant not in kept else kept[variant]
            for variant in VARIANT_FLAGS
        }
        row["onnx_vs_torch_snr_db"] = _onnx_vs_torch(d, onnx_path)
        row["onnx_sha256"] = sha256(onnx_path)
        data = load_json(NIRC_JSON)  # re-read: another run may have saved other models meanwhile
        data[name] = row
        save_json(NIRC_JSON, data)
        full = row["full"]
        print(f"{name}: nirc {full.get('vela', {}).get('inference_time_ms', full.get('error'))}", flush=True)


# --------------------------------------------------------------------------- stage (c)


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _geomeans(et: dict[str, Any], nr: dict[str, Any]) -> str:
    """Geometric mean of ExecuTorch ms / nirc ms per configuration over the models both compiled."""
    parts = []
    for key, label in VARIANT_LABELS:
        ratios = []
        for spec in MODELS:
            e = et.get(spec.name, {}).get("executorch")
            n = nr.get(spec.name, {}).get(key)
            if e and n and "vela" in n:
                ratios.append(e["vela"]["inference_time_ms"] / n["vela"]["inference_time_ms"])
        if ratios:
            gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            parts.append(f"{label}: {gm:.2f}x ({sum(r >= 1 for r in ratios)}/{len(ratios)} models at least as fast)")
    return "Geomean speed-up over ExecuTorch (ExecuTorch ms / nirc ms): " + "; ".join(parts) + "."


def table_markdown(et: dict[str, Any], nr: dict[str, Any]) -> str:
    lines = [
        "| model | compiler | Vela ms | SRAM KiB | DRAM FM read MB | DRAM FM write MB | DRAM weights MB "
        "| partitions / CPU ops | int8 SNR dB | top-1 agree | compile s | ms ÷ ExecuTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    versions: set[str] = set()
    for spec in MODELS:
        rows: list[tuple[str, dict[str, Any] | None, str, float | None, float | None, float | None]] = []
        e = et.get(spec.name, {}).get("executorch")
        if e:
            versions.add(f"ExecuTorch {e['version']} (torch {e['torch_version']}, Vela {e['vela_version']})")
            snr = e["snr"]
            cpu = sum(e["cpu_ops"].values())
            rows.append(
                (
                    "ExecuTorch",
                    e["vela"],
                    f"{e['partitions']} / {cpu}",
                    snr.get("tosa_int8_db", snr.get("pt2e_fake_quant_db")),
                    snr.get("tosa_int8_top1", snr.get("pt2e_fake_quant_top1")),
                    e["compile_s"],
                )
            )
        stale = (
            e
            and "onnx_sha256" in nr.get(spec.name, {})
            and nr[spec.name]["onnx_sha256"] != et[spec.name]["onnx_sha256"]
        )
        for key, label in VARIANT_LABELS:
            n = None if stale else nr.get(spec.name, {}).get(key)
            if not n:
                continue
            if "error" in n:
                rows.append((label, None, n["error"], None, None, n["compile_s"]))
                continue
            versions.add(f"nirc {n['nirc_version']} (Vela {n['vela_version']})")
            rows.append(
                (
                    label,
                    n["vela"],
                    f"1 / {n['vela']['cpu_ops']}",
                    n["snr_heldout_db"],
                    n["top1_heldout"],
                    n["compile_s"],
                )
            )
        et_ms = e["vela"]["inference_time_ms"] if e else None
        for label, v, ops, snr_v, t1, secs in rows:
            if v is None:
                lines.append(f"| {spec.name} | {label} | {ops} | | | | | | | | {_fmt(secs, 1)} | |")
                continue
            ratio = v["inference_time_ms"] / et_ms if et_ms else None
            lines.append(
                f"| {spec.name} | {label} | {v['inference_time_ms']:.3f} | {v['sram_used_kib']:.0f} "
                f"| {v['dram_feature_map_read_bytes'] / 1e6:.2f} | {v['dram_feature_map_write_bytes'] / 1e6:.2f} "
                f"| {v['dram_weight_bytes'] / 1e6:.2f} | {ops} | {_fmt(snr_v, 1)} | {_fmt(t1, 2)} | {_fmt(secs, 1)} "
                f"| {_fmt(ratio, 3)} |"
            )
    lines += ["", _geomeans(et, nr), "", "Versions: " + "; ".join(sorted(versions)) + "."]
    return "\n".join(lines)


SECTION_INTRO = (
    "## nirc vs the ExecuTorch Arm backend\n\n"
    "Generated by `benchmarks/vs_executorch.py` (stages `export` in an ExecuTorch venv, `nirc`, `table`). "
    "Same torchvision / ultralytics modules, seeded random weights with BatchNorm statistics re-estimated on "
    "natural-image-like inputs, same 16 calibration samples; ExecuTorch: `EthosUQuantizer` (per-channel int8), "
    "`EthosUPartitioner`, `EthosUCompileSpec(ethos-u65-256, Ethos_U65_High_End, Dedicated_Sram_384KB)`; nirc: "
    "`nirc optimize --target ethos-u65 --calib` on the TorchScript ONNX export (opset 17) of the same module. "
    "Vela ms, SRAM and DRAM traffic are Vela's estimates summed over ExecuTorch's delegated partitions. int8 SNR and "
    "top-1 agreement: 16 held-out inputs vs the float PyTorch module (ExecuTorch: its TOSA int8 graph in the TOSA "
    "reference model; nirc: its int8 TFLite in LiteRT, or for a TOSA-form artifact its TOSA graph in the TOSA "
    "reference model). CPU ops: ExecuTorch ops left outside the delegate "
    "(including the input quantize / output dequantize), nirc ops Vela left on the CPU. Compile seconds: "
    "quantization + lowering + Vela on a shared 2-core machine whose load varied between rows (nirc with "
    "`--validate none` and an empty Vela cost cache): compare orders of magnitude only. "
    "The weights are untrained, so SNR compares the two int8 flows on the same function, not task accuracy, and "
    "the top-1 agreement of an untrained classifier (near-equal logits) says little.\n\n"
)


def stage_table() -> None:
    et, nr = load_json(ET_JSON), load_json(NIRC_JSON)
    body = table_markdown(et, nr)
    notes = _notes(et, nr)
    breakdown = (
        "\n## Where the cycles go\n\nVela's per-layer estimate in kcycles, summed per original operator type (top 6; "
        "ExecuTorch's are TOSA ops, nirc's TFLite ops).\n\n" + breakdown_markdown()
    )
    TABLE_MD.write_text(
        "# nirc vs ExecuTorch Arm backend (ethos-u65-256)\n\n"
        + SECTION_INTRO.split("\n\n", 1)[1]
        + body
        + "\n"
        + notes
        + breakdown,
        encoding="utf-8",
    )
    section = f"{SECTION_BEGIN}\n{SECTION_INTRO}{body}\n{notes}{SECTION_END}\n"
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.is_file() else "# Benchmarks\n"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + section + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS_MD.write_text(text, encoding="utf-8")
    print(body)


def cycles_by_op(paths: Sequence[Path]) -> Counter[str]:
    """Vela's per-layer cycles summed per original operator type, over one or more per-layer CSVs."""
    total: Counter[str] = Counter()
    for path in paths:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
        head = rows[0]
        op_at = next(head.index(c) for c in ("Original Operator", "TFLite_operator", "TOSA_operator") if c in head)
        cycles_at = head.index("Op Cycles")
        for row in rows[1:]:
            if len(row) >= len(head):
                total[row[op_at]] += round(float(row[cycles_at]))
    return total


def breakdown_markdown() -> str:
    """Per model: operator types whose cycles differ most between ExecuTorch and nirc (full pipeline)."""
    lines = [
        "| model | ExecuTorch (TOSA ops) | nirc (TFLite ops) |",
        "|---|---|---|",
    ]
    for spec in MODELS:
        et_csvs = sorted((VELA_DIR / spec.name).glob("partition*/executorch_*per-layer.csv"))
        nirc_csvs = sorted((VELA_DIR / spec.name / "nirc_full").glob("*per-layer.csv"))
        if not et_csvs or not nirc_csvs:
            continue
        cells = []
        for csvs in (et_csvs, nirc_csvs):
            cyc = cycles_by_op(csvs)
            cells.append(", ".join(f"{op} {c / 1e3:.0f}" for op, c in cyc.most_common(6) if c))
        lines.append(f"| {spec.name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _notes(et: dict[str, Any], nr: dict[str, Any]) -> str:
    lines = []
    agree = [row["onnx_vs_torch_snr_db"] for row in nr.values() if "onnx_vs_torch_snr_db" in row]
    if agree:
        lines.append(
            f"- The ONNX files nirc compiles reproduce the PyTorch modules to {min(agree):.0f} dB or better "
            "(ONNX Runtime vs PyTorch on the held-out inputs)."
        )
    for name, row in et.items():
        e = row["executorch"]
        extra = {k: v for k, v in e["cpu_ops"].items() if k not in ("quantize_per_tensor", "dequantize_per_tensor")}
        if extra:
            ops = ", ".join(f"{k} x{v}" for k, v in extra.items())
            lines.append(f"- {name}: ExecuTorch ops outside the delegate besides the I/O (de)quantize: {ops}.")
        if "tosa_note" in e["snr"]:
            lines.append(f"- {name}: ExecuTorch SNR from the PT2E fake-quantized module ({e['snr']['tosa_note']}).")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("export", "nirc", "table"))
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(BY_NAME)}")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANT_FLAGS),
        default=tuple(VARIANT_FLAGS),
        help="nirc stage: which configurations to re-measure (the others' saved results are kept)",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in BY_NAME]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    names = args.models or list(BY_NAME)
    stages: dict[str, Callable[[], None]] = {
        "export": lambda: stage_export(names),
        "nirc": lambda: stage_nirc(names, args.variants),
        "table": stage_table,
    }
    stages[args.stage]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
