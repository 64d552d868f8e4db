#!/usr/bin/env python3
"""Export public attention architectures (random weights) with both ONNX exporters, for benchmarks/attention.py.

Run with the torch environment, not nirc's (nirc never imports torch)::

    /work/torchenv/bin/python benchmarks/export_attention_zoo.py -o /tmp/attention_zoo

Models (low resolution so a compile takes seconds; BatchNorm statistics re-estimated on random
inputs so int8 ranges look like a trained model's): timm ``mobilevit_xxs`` (128x128), timm
``vit_tiny_patch16_224`` at 64x64, timm ``levit_128s`` (LeViT, attention with biases, 128x128)
and ultralytics YOLO11n built from its yaml (C2PSA attention, 160x160).  Each becomes
``<name>_ts.onnx`` (TorchScript exporter, opset 17) and ``<name>_dynamo.onnx`` (dynamo, opset 18).
"""

from __future__ import annotations

import argparse
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def _timm(name: str, size: int, **kwargs: object) -> Callable[[], tuple[nn.Module, tuple[int, ...]]]:
    def make() -> tuple[nn.Module, tuple[int, ...]]:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs), (1, 3, size, size)

    return make


def _yolo11n() -> tuple[nn.Module, tuple[int, ...]]:
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml").model
    head = model.model[-1]
    head.export = True  # the exported (decoded) output, as ultralytics' own ONNX export sets
    head.format = "onnx"
    return model, (1, 3, 160, 160)


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "mobilevit_xxs": _timm("mobilevit_xxs", 128),
    "vit_tiny": _timm("vit_tiny_patch16_224", 64, img_size=64),
    "levit_128s": _timm("levit_128s", 128, img_size=128),
    "yolo11n": _yolo11n,
}


def _reestimate_bn(model: nn.Module, shape: tuple[int, ...]) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, *shape[1:]))  # a batch: BatchNorm1d cannot train on one sample
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-o", "--out-dir", type=Path, required=True)
    parser.add_argument("names", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        torch.manual_seed(0)
        model, shape = MODELS[name]()
        model.eval()
        _reestimate_bn(model, shape)
        x = torch.randn(*shape)
        for exporter in ("ts", "dynamo"):
            path = args.out_dir / f"{name}_{exporter}.onnx"
            try:
                if exporter == "ts":
                    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                                      input_names=["x"])
                else:
                    prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["x"],
                                             external_data=False)
                    prog.save(str(path))
                print(f"{path} {path.stat().st_size} bytes", flush=True)
            except Exception:
                print(f"{path}: export failed", flush=True)
                traceback.print_exc()


if __name__ == "__main__":
    main()
