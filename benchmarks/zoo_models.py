"""Export the public-zoo set: real torchvision / timm / ultralytics architectures as ONNX files.

Runs in a torch venv (``pip install -e .[zoo]``), never in nirc's own: ``benchmarks/zoo.py export``
imports this module only for the ``export`` command.

Why the models are prepared the way they are:
- Random init, no downloads: the benchmark measures the compiler on real architectures, not a task.
- BatchNorm statistics re-estimated on random batches (momentum=None → cumulative average,
  reset_running_stats, train mode, ``BN_PASSES`` forward passes, then eval). At init the running
  stats are 0/1, so every BN is an identity on activations that grow or shrink layer after layer;
  deep nets then emit outputs around 1e-8 and int8 accuracy means nothing.
- One seed per architecture (crc32 of its name) and one intra-op thread, so a re-run writes
  byte-identical files and the TorchScript and dynamo exports of one network carry the same weights
  (both come from the same prepared module in one process).
- Exporters: ``torchscript`` = torch.onnx.export(dynamo=False, opset_version=17); ``dynamo`` =
  torch.onnx.export(dynamo=True) at its default opset (recorded per file); ``ultralytics`` =
  YOLO.export(format="onnx", opset=18, simplify=False) for the detectors (no onnxslim, offline).
- Input sizes: torchvision 224x224; timm the model's own default input size (pretrained_cfg), which
  avoids the resizes MobileViT inserts at 224 and is the only size LeViT / EfficientFormerV2 accept;
  ultralytics detectors 320x320, built from their yaml (no weights). Batch 1, float32.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (lib, arch) in export order: cheap and popular first. Data, not code: add a line to add a model.
ARCHS: list[tuple[str, str]] = [
    ("torchvision", "mobilenet_v2"),
    ("torchvision", "resnet18"),
    ("ultralytics", "yolov8n"),
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "mobilenet_v3_large"),
    ("torchvision", "efficientnet_b0"),
    ("torchvision", "shufflenet_v2_x1_0"),
    ("torchvision", "squeezenet1_1"),
    ("timm", "mobilevit_xxs"),
    ("ultralytics", "yolo11n"),
    ("timm", "ghostnet_100"),
    ("timm", "lcnet_050"),
    ("timm", "mobilenetv4_conv_small"),
    ("timm", "efficientformerv2_s0"),
    ("timm", "levit_128s"),
    ("timm", "repvgg_a0"),
    ("timm", "mobileone_s0"),
    ("timm", "fastvit_t8"),
    ("timm", "mobilevitv2_050"),
    ("timm", "edgenext_xx_small"),
    ("timm", "efficientvit_b0"),
    ("ultralytics", "yolov5nu"),
    ("torchvision", "mnasnet1_0"),
    ("torchvision", "regnet_x_400mf"),
    ("timm", "mixnet_s"),
    ("timm", "rexnet_100"),
    ("timm", "tinynet_a"),
    ("timm", "repvit_m0_9"),
    ("torchvision", "resnet50"),
]
EXPORTERS = ("torchscript", "dynamo", "ultralytics")
TORCHSCRIPT_OPSET = 17
ULTRALYTICS_OPSET = 18
YOLO_SIZE = 320
TORCHVISION_SIZE = 224
BN_PASSES = 32
BN_BATCH = 8
MAX_PARAMS = 30_000_000
# ultralytics yaml per detector name ("u" = anchor-free head on the v5 backbone, yolov5.yaml scale n).
YOLO_YAML = {"yolov8n": "yolov8n.yaml", "yolo11n": "yolo11n.yaml", "yolov5nu": "yolov5nu.yaml"}


def file_name(lib: str, arch: str, exporter: str) -> str:
    return f"{lib}__{arch}__{exporter}.onnx"


def _seed(arch: str) -> int:
    return zlib.crc32(arch.encode())


def _build(lib: str, arch: str) -> tuple[Any, tuple[int, int, int, int], Any]:
    """The float module in eval mode (the module to export), its input shape and the YOLO wrapper if any."""
    import torch

    torch.manual_seed(_seed(arch))
    if lib == "torchvision":
        import torchvision

        model = torchvision.models.get_model(arch, weights=None)
        return model, (1, 3, TORCHVISION_SIZE, TORCHVISION_SIZE), None
    if lib == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False)
        c, h, w = model.pretrained_cfg["input_size"]
        return model, (1, c, h, w), None
    if lib == "ultralytics":
        from ultralytics import YOLO

        yolo = YOLO(YOLO_YAML[arch], task="detect")
        return yolo.model, (1, 3, YOLO_SIZE, YOLO_SIZE), yolo
    raise ValueError(f"unknown lib {lib!r}")


def recalibrate_batchnorm(model: Any, shape: tuple[int, ...], seed: int) -> int:
    """Re-estimate every BatchNorm's running mean/var on random batches; returns how many BNs."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(BN_PASSES if bns else 0):
            model(torch.randn((BN_BATCH, *shape[1:]), generator=gen))
    model.eval()
    return len(bns)


class _FirstOutput:
    """Wraps a module whose eval forward returns (prediction, extras): the export keeps the prediction only
    (what ultralytics' own export does for Detect heads)."""

    def __new__(cls, inner: Any) -> Any:
        import torch

        class FirstOutput(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                out = self.inner(x)
                return out[0] if isinstance(out, list | tuple) else out

        return FirstOutput()


def _export_torchscript(model: Any, x: Any, path: Path) -> None:
    import torch

    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=TORCHSCRIPT_OPSET,
        input_names=["input"],
        output_names=["output"],
        do_constant_folding=True,
    )


def _export_dynamo(model: Any, x: Any, path: Path) -> None:
    import torch

    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, verbose=False, report=False)


def _export_ultralytics(yolo: Any, path: Path) -> None:
    # YOLO.export writes next to the working directory whatever project= says: run it in a temporary one.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        out = yolo.export(format="onnx", opset=ULTRALYTICS_OPSET, imgsz=YOLO_SIZE, simplify=False, dynamic=False)
        shutil.move(str(Path(tmp) / out), path)


def _check(path: Path, model: Any, x: Any) -> dict[str, Any]:
    """Opset, op count and ORT-vs-torch max abs difference of the written file."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    proto = onnx.load(str(path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)
    ref = (ref[0] if isinstance(ref, list | tuple) else ref).numpy()
    diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("nan")
    return {
        "opset": opset,
        "nodes": len(proto.graph.node),
        "ort_max_abs_diff": diff,
        "out_abs_max": float(np.max(np.abs(ref))),
        "bytes": path.stat().st_size,
    }


def export_arch(lib: str, arch: str, outdir: Path, exporters: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every requested export of one architecture from one prepared module (same weights in each file)."""
    import torch

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    base = {"lib": lib, "arch": arch}
    try:
        model, shape, yolo = _build(lib, arch)
        params = sum(p.numel() for p in model.parameters())
        base.update(shape=list(shape), params=params)
        if params > MAX_PARAMS:
            raise ValueError(f"{params / 1e6:.1f} M params > {MAX_PARAMS / 1e6:.0f} M limit")
        nbn = recalibrate_batchnorm(model, shape, _seed(arch))
        base["batchnorms"] = nbn
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(_seed(arch) + 1))
        net = _FirstOutput(model) if lib == "ultralytics" else model
        net.eval()
        with torch.no_grad():
            net(x)  # ultralytics Detect caches anchors/strides for this input size on the first call
    except Exception as exc:  # recorded in the manifest, never fatal for the other archs
        return [{**base, "exporter": "-", "status": f"build failed: {_one_line(exc)}"}]
    todo: dict[str, Callable[[Path], None]] = {
        "torchscript": lambda p: _export_torchscript(net, x, p),
        "dynamo": lambda p: _export_dynamo(net, x, p),
    }
    if yolo is not None:
        todo["ultralytics"] = lambda p: _export_ultralytics(yolo, p)
    for exporter, fn in todo.items():
        if exporter not in exporters:
            continue
        path = outdir / file_name(lib, arch, exporter)
        row: dict[str, Any] = {**base, "exporter": exporter, "file": path.name}
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                fn(path)
            row.update(_check(path, net, x))
            row["status"] = "ok"
        except Exception as exc:
            row["status"] = f"export failed: {_one_line(exc)}"
            (outdir / "logs").mkdir(exist_ok=True)
            (outdir / "logs" / f"{path.stem}.txt").write_text(traceback.format_exc())
            path.unlink(missing_ok=True)
        row["export_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return rows


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def write_manifest(outdir: Path, rows: list[dict[str, Any]]) -> None:
    lines = [
        "# Public-zoo ONNX exports",
        "",
        "Made by `benchmarks/zoo.py export` (nirc repo, branch zoo) with the torch venv: torch/torchvision/timm/",
        "ultralytics at random init (seed = crc32(arch)), BatchNorm running stats re-estimated on "
        f"{BN_PASSES} random N(0,1) batches of {BN_BATCH} (momentum=None), eval mode, batch 1, float32.",
        f"Exporters: torchscript = torch.onnx.export(dynamo=False, opset {TORCHSCRIPT_OPSET}); dynamo = "
        "torch.onnx.export(dynamo=True, default opset); ultralytics = YOLO.export(format='onnx', "
        f"opset={ULTRALYTICS_OPSET}, simplify=False). Detectors built from yaml, {YOLO_SIZE}x{YOLO_SIZE}, "
        "output = Detect's concatenated prediction only.",
        "`ort_diff` = max |ORT - torch| on one random input; `out_max` = max |output| (shows the net is not dead).",
        "Failed exports keep their traceback in logs/<file stem>.txt.",
        "",
        "| file | arch | lib | exporter | opset | input | params | nodes | ort_diff | out_max | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "x".join(str(d) for d in r.get("shape", [])) or "-"
        params = f"{r['params'] / 1e6:.2f} M" if "params" in r else "-"
        diff = f"{r['ort_max_abs_diff']:.1e}" if "ort_max_abs_diff" in r else "-"
        omax = f"{r['out_abs_max']:.3g}" if "out_abs_max" in r else "-"
        lines.append(
            f"| {r.get('file', '-')} | {r['arch']} | {r['lib']} | {r['exporter']} | {r.get('opset', '-')} | "
            f"{shape} | {params} | {r.get('nodes', '-')} | {diff} | {omax} | {r['status']} |"
        )
    ok = sum(r["status"] == "ok" for r in rows)
    lines += ["", f"{ok} of {len(rows)} exports ok."]
    (outdir / "MANIFEST.md").write_text("\n".join(lines) + "\n")


def export_all(outdir: Path, only: str | None, exporters: tuple[str, ...]) -> int:
    """Export every architecture (resumable: rows already in manifest.json with status ok are kept)."""
    outdir.mkdir(parents=True, exist_ok=True)
    cache = outdir / "manifest.json"
    rows: list[dict[str, Any]] = json.loads(cache.read_text()) if cache.exists() else []
    for lib, arch in ARCHS:
        if only and only not in arch:
            continue
        done = {
            r["exporter"] for r in rows if r["arch"] == arch and r["status"] == "ok" and (outdir / r["file"]).exists()
        }
        want = tuple(e for e in exporters if e not in done and (e != "ultralytics" or lib == "ultralytics"))
        if not want:
            continue
        print(f"[zoo export] {lib}/{arch}: {', '.join(want)}", flush=True)
        new = export_arch(lib, arch, outdir, want)
        rows = [r for r in rows if not (r["arch"] == arch and r["exporter"] in {*want, "-"})] + new
        order = {a: i for i, (_, a) in enumerate(ARCHS)}
        rows.sort(
            key=lambda r: (
                order.get(r["arch"], 999),
                EXPORTERS.index(r["exporter"]) if r["exporter"] in EXPORTERS else -1,
            )
        )
        cache.write_text(json.dumps(rows, indent=1) + "\n")
        write_manifest(outdir, rows)
        for r in new:
            print(f"    {r.get('file', arch)}: {r['status']} ({r.get('export_s', 0)} s)", flush=True)
    return 0
