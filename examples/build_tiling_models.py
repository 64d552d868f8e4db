#!/usr/bin/env python3
"""Build the tiling benchmark models as deterministic, random-weight ONNX files.

Why this exists: ``tile-activations`` and ``schedule-memory`` matter where feature maps are larger than
the 384 KiB arena cache of the reference Ethos-U65 -- ImageNet-resolution classifiers and detectors --
and on branchy graphs. ``build_models.py`` has MobileNetV2-224; this adds the two other benchmark
networks with the same conventions (PyTorch eval-mode export shape, opset 18, NCHW, batch 1, weights
seeded per tensor from ``crc32("<model>/<tensor>")``, reusing that module's :class:`GraphBuilder` and
``build_detection_models.py``'s YOLO blocks):

``resnet18_224``
    torchvision ``resnet18()``: 7x7/2 stem + BN + ReLU, 3x3/2 max-pool, four stages of two basic blocks
    (64, 128, 256, 512 channels; 1x1/2 conv + BN projection shortcuts), global pool, Linear(512, 1000).
    1.81 G MACs, 11.69 M params (torchvision: 1.82 G / 11.69 M).
``branchy_56``
    Four asymmetric two-branch blocks (Add joins) at 56x56: where the order of branches changes the peak.
``yolo_320``
    YOLOv8n-style detector at 320x320 (widths 16..256): Conv+BN+SiLU, C2f blocks (Split -> bottlenecks
    -> Concat), SPPF, a PAN neck with nearest x2 upsampling, three 1x1 heads (4 box + 80 class channels)
    at strides 8, 16 and 32. The 160x160x16 and 80x80x32 maps exceed the arena; the neck is branchy.

Usage::

    python examples/build_tiling_models.py -o out            # both -> out/<name>.onnx
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import onnx

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "models"


def _load(module: str) -> ModuleType:
    """A sibling example module (``examples/`` is not a package), loaded once under a private name."""
    name = f"_nirc_examples_{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{module}.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {module}.py next to {__file__}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


_bm = _load("build_models")
_det = _load("build_detection_models")

_RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (planes, first stride); two blocks each


def resnet18_224() -> onnx.ModelProto:
    """torchvision ResNet-18, 224x224, 1000 classes; module paths as in its state_dict."""
    b = _bm.GraphBuilder("resnet18_224", (1, 3, 224, 224))
    x = b.conv_bn_act(b.input_name, ("conv1", "bn1", "relu"), 64, 7, 2, gain=1.0)
    n, c, h, w = b.shapes[x]  # nn.MaxPool2d(3, 2, padding=1): GraphBuilder.maxpool has no padding
    shape = (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    x = b._node("MaxPool", [x], "maxpool", shape, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    branch_scale = 1.0 / math.sqrt(2 * len(_RESNET18_STAGES))
    for stage, (planes, first_stride) in enumerate(_RESNET18_STAGES, start=1):
        for i in range(2):
            p = f"layer{stage}.{i}"
            stride = first_stride if i == 0 else 1
            y = b.conv_bn_act(x, (f"{p}.conv1", f"{p}.bn1", f"{p}.relu1"), planes, 3, stride)
            y = b.conv_bn_act(y, (f"{p}.conv2", f"{p}.bn2", None), planes, 3, gain=_bm._RELU_GAIN * branch_scale)
            if stride != 1 or b.shapes[x][1] != planes:
                x = b.conv_bn_act(x, (f"{p}.downsample.0", f"{p}.downsample.1", None), planes, 1, stride)
            x = b.relu(b.add(y, x, f"{p}.add"), f"{p}.relu2")
    out = b.classifier_head(x, 1000, fc="fc")
    return b.finish(out, "torchvision ResNet-18, 224x224, 1000 classes")  # type: ignore[no-any-return]


def yolo_320() -> onnx.ModelProto:
    """YOLOv8n-like detector at 320x320; outputs ``head_p3``, ``head_p4``, ``head_p5`` (84 channels each)."""
    b = _det.Builder("yolo_320", (1, 3, 320, 320), input_name="images")
    c2f, sppf = _det._c2f, _det._sppf
    x = b.conv_bn_silu(b.input_name, "model.0", 16, 3, 2)  # /2
    x = b.conv_bn_silu(x, "model.1", 32, 3, 2)  # /4
    x = c2f(b, x, "model.2", 32)
    x = b.conv_bn_silu(x, "model.3", 64, 3, 2)  # /8
    p3 = c2f(b, x, "model.4", 64, blocks=2)
    x = b.conv_bn_silu(p3, "model.5", 128, 3, 2)  # /16
    p4 = c2f(b, x, "model.6", 128, blocks=2)
    x = b.conv_bn_silu(p4, "model.7", 256, 3, 2)  # /32
    x = c2f(b, x, "model.8", 256)
    p5 = sppf(b, x, "model.9", 256)
    x = b.concat([b.upsample2(p5, "model.10"), p4], "model.11")
    n4 = c2f(b, x, "model.12", 128, shortcut=False)
    x = b.concat([b.upsample2(n4, "model.13"), p3], "model.14")
    o3 = c2f(b, x, "model.15", 64, shortcut=False)
    x = b.concat([b.conv_bn_silu(o3, "model.16", 64, 3, 2), n4], "model.17")
    o4 = c2f(b, x, "model.18", 128, shortcut=False)
    x = b.concat([b.conv_bn_silu(o4, "model.19", 128, 3, 2), p5], "model.20")
    o5 = c2f(b, x, "model.21", 256, shortcut=False)
    heads = []
    for level, feat in zip((3, 4, 5), (o3, o4, o5), strict=True):
        y = b.conv_bn_silu(feat, f"model.22.cv.{level}.0", 64, 3)
        heads.append(b.conv_bias(y, f"model.22.cv.{level}.1", 84, 1, output=f"head_p{level}"))
    doc = "YOLOv8n-style detector (C2f, SPPF, PAN, 3 heads), 320x320, random weights"
    return b.finish_multi(heads, doc)  # type: ignore[no-any-return]


def branchy_56() -> onnx.ModelProto:
    """Four two-branch blocks at 56x56 whose Adds list the branches in the memory-unfriendly order.

    Branch ``a`` has a small intermediate and a big output, branch ``b`` a big intermediate: running ``b``
    first keeps less alive. Vela runs an Add's second input first, so ``Add(b, a)`` -- the order an
    exporter may well produce -- makes it run ``a`` first. A schedule-memory benchmark, not a real network.
    """
    b = _bm.GraphBuilder("branchy_56", (1, 16, 56, 56))
    x = b.input_name
    for i in range(4):
        p = f"block{i}"
        a = b.conv_bn_act(x, (f"{p}.a.0", f"{p}.a.0.bn", f"{p}.a.0.relu"), 16, 1)
        a = b.conv_bn_act(a, (f"{p}.a.1", f"{p}.a.1.bn", None), 64, 3, gain=1.0)
        c = b.conv_bn_act(x, (f"{p}.b.0", f"{p}.b.0.bn", f"{p}.b.0.relu"), 128, 1)
        c = b.conv_bn_act(c, (f"{p}.b.1", f"{p}.b.1.bn", None), 64, 1, gain=1.0)
        y = b.relu(b.add(c, a, f"{p}.add"), f"{p}.relu")
        x = b.conv_bn_act(y, (f"{p}.proj", f"{p}.proj.bn", None), 16, 1, gain=1.0)
    out = b.classifier_head(x, 10, fc="fc")
    return b.finish(out, "four asymmetric two-branch blocks at 56x56 (schedule-memory benchmark)")  # type: ignore[no-any-return]


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet18_224": resnet18_224,
    "yolo_320": yolo_320,
    "branchy_56": branchy_56,
}


def build(name: str) -> onnx.ModelProto:
    """Build model ``name`` (a key of :data:`MODELS`, or ``mobilenetv2_224`` from ``build_models.py``)."""
    if name == "mobilenetv2_224":
        return _bm.build(name)  # type: ignore[no-any-return]
    return _bm.pick(MODELS, name)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    names, out_dir = _bm.parse_model_args(__doc__, MODELS, argv)
    for name in names:
        model = build(name)
        onnx.checker.check_model(model, full_check=True)
        data = model.SerializeToString()
        (out_dir / f"{name}.onnx").write_bytes(data)
        macs, params = _bm.count_macs_params(model)
        print(f"{name:<14} {len(model.graph.node):>4} nodes {macs / 1e9:>6.2f} G MACs {params / 1e6:>6.2f} M params")
    print(f"written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
