#!/usr/bin/env python3
"""Build the seed benchmark models as deterministic, random-weight ONNX files.

Why this exists: nirc's benchmarks need the *architectures* of the seed models (VGG19, ResNet50,
MobileNetV1/V2 ...) but shipping or downloading trained weights is neither possible nor necessary to
measure compile-time behaviour (MACs, SRAM use, cycle estimates).  So the graphs are built here with
``onnx.helper`` and seeded NumPy weights.  Everything is byte-for-byte reproducible: every initializer is
drawn from its own generator seeded with ``crc32("<model>/<tensor>")`` (adding a layer does not reshuffle
the others), the ONNX IR version and producer are pinned, and nothing time- or host-dependent is stored.
(NumPy does not promise ``Generator`` streams stable across releases; should one change, the test comparing
the shipped ``examples/tiny_cnn.onnx`` with a fresh build will say so.)

Graph conventions -- the shape of a PyTorch eval-mode export (opset 18, NCHW, float32, batch 1):

* ``Conv`` without bias, followed by a separate ``BatchNormalization`` (eps 1e-5) and a separate
  ``Relu`` (or ``Clip(0, 6)`` for ReLU6), i.e. nothing is pre-folded, so nirc's own folding passes have
  work to do.
* Classifier head ``GlobalAveragePool -> Flatten -> Gemm(transB=1)`` (the VGGs flatten their final
  feature map directly, as their reference implementations do).
* Node names are the PyTorch module paths of the reference implementations and initializer names are
  their ``state_dict`` keys (``features.0.weight``, ``layer1.0.bn1.running_var``, ...), so a trained
  checkpoint could be dropped in by name.  Functional ops that have no module get descriptive names
  (``layer1.0.relu3``, ``layer1.0.add``).  Dropout (identity in eval mode) is not emitted.

Random weights are chosen so that int8 quantization of the result is meaningful (activations neither
explode nor vanish across 50+ layers):

* conv/linear weights are He-normal, ``std = gain / sqrt(fan_in)`` with ``gain = sqrt(2)`` after a ReLU
  and 1 otherwise, divided by ``sqrt(E[gamma^2 / var])`` when a BatchNormalization follows, because the
  random (not data-derived) BN statistics would otherwise amplify the signal by ~1.09x per layer;
* BN params: ``gamma ~ U(0.5, 1.5)``, ``beta ~ N(0, 0.1)``, ``mean ~ N(0, 0.1)``, ``var ~ U(0.5, 1.5)``;
* the last conv of every residual branch is scaled by ``1 / sqrt(#residual blocks)`` (as Fixup / zero-init
  residual schemes do), otherwise eval-mode BN -- which does not renormalise -- lets the variance grow
  geometrically along the 16 blocks of ResNet50.

With these, post-activation standard deviations stay within ~0.2..3 in every model.  Note that on
white-noise inputs the logits of any random-weight network with global pooling are dominated by an
input-independent component (cosine similarity ~0.99 between two inputs, same argmax), so judge int8
accuracy by element-wise error against the float model, not by top-1 agreement.

Models (MACs count Conv and Gemm multiply-accumulates only; params are learnable tensors, i.e. conv and
linear weights/biases and BN gamma/beta, not BN running statistics):

``vgg19_cifar100``
    CIFAR VGG19-BN (kuangliu/pytorch-cifar layout): 16 conv3x3+BN+ReLU, 5 max-pools, Linear(512, 100).
    The trailing ``AvgPool2d(1)`` of the reference is a no-op on the 1x1 map and is omitted.
    398.2 M MACs, 20.08 M params (reference 398.3 M / 20.1 M).
``resnet50_cifar100``
    kuangliu-style CIFAR ResNet50: 3x3 stride-1 stem, no max-pool, bottlenecks [3, 4, 6, 3] with the
    stride on the 3x3 conv and conv1x1+BN projection shortcuts, Linear(2048, 100).
    1298.0 M MACs, 23.71 M params (reference 1298.0 M / 23.8 M).  The MACs match exactly, which pins the
    architecture; the 0.4% params gap is not explained by any counting variant checked (adding BN running
    statistics gives 23.76 M, conv biases 23.73 M), so it is most likely rounding in the seed's figure.
``mobilenetv1_cifar100``
    kuangliu pytorch-cifar MobileNet: stem conv3x3 3->32 stride 1, 13 depthwise-separable blocks with
    config ``64, (128,2), 128, (256,2), 256, (512,2), 512 x5, (1024,2), 1024``, global pool on the 2x2
    map, Linear(1024, 100).  46.4 M MACs, 3.31 M params (reference 46.5 M / 3.3 M).
``vgg19_224_10``
    VGG19-BN features at 224x224 (20.03 M params, 19.5 G MACs) with the head
    ``Flatten(512*7*7) -> Linear(25088, 512) -> ReLU -> Linear(512, 10)``: 32.88 M params total, the
    closest to the seed's 32.9 M of the candidate heads (torchvision's 4096-wide head: 139.6 M; a
    three-layer 512-wide head: 33.14 M; a single Linear(25088, 10): 20.28 M).  torchvision's
    ``AdaptiveAvgPool2d((7, 7))`` is the identity at 224x224 and is omitted.  The seed gives no MAC
    figure for this model.
``mobilenetv2_224``
    torchvision MobileNetV2 (width 1.0), 224x224, 1000 classes, ReLU6 exported as ``Clip(0, 6)``.
    300.8 M MACs, 3.50 M params.
``tiny_cnn``
    A ~60 KB smoke-test CNN (shipped as ``examples/tiny_cnn.onnx``): conv/BN/ReLU stem, a strided conv to
    24 channels (deliberately not a multiple of 16, to exercise NPU channel padding), a depthwise +
    pointwise residual block with ``Add``, a strided conv to 40 channels, GlobalAveragePool, Gemm to 10.

Usage::

    python examples/build_models.py                      # all models -> examples/models/ (gitignored)
    python examples/build_models.py -o out vgg19_cifar100
    python examples/build_models.py -o examples tiny_cnn # regenerate the shipped tiny model
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx

from nirc.search import graph
from nirc.search.graph import IR_VERSION, OPSET, PRODUCER, count_macs_params  # noqa: F401  (re-exported)
from nirc.search.graph import RELU_GAIN as _RELU_GAIN

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "models"

#: The seed's reference (MACs, params) per model; ``None`` where the seed gave no figure.
REFERENCE: dict[str, tuple[int | None, int]] = {
    "vgg19_cifar100": (398_300_000, 20_100_000),
    "resnet50_cifar100": (1_298_000_000, 23_800_000),
    "mobilenetv1_cifar100": (46_500_000, 3_300_000),
    "vgg19_224_10": (None, 32_900_000),
    "mobilenetv2_224": (300_800_000, 3_500_000),
}


class GraphBuilder(graph.GraphBuilder):
    """nirc's builder (:mod:`nirc.search.graph`), naming this script in the models' doc strings."""

    doc_source = "examples/build_models.py"


# ---------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------

_VGG19_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
_VGG19_CFG += [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def _vgg19_features(b: GraphBuilder, x: str) -> str:
    """torchvision ``make_layers(cfg, batch_norm=True)``: Sequential indices conv=i, bn=i+1, relu=i+2."""
    idx = 0
    gain = 1.0  # the first conv sees the (not ReLU'd) image
    for v in _VGG19_CFG:
        if v == "M":
            x = b.maxpool(x, f"features.{idx}")
            idx += 1
            continue
        assert isinstance(v, int)
        names = (f"features.{idx}", f"features.{idx + 1}", f"features.{idx + 2}")
        x = b.conv_bn_act(x, names, v, 3, gain=gain)
        gain = _RELU_GAIN
        idx += 3
    return x


def vgg19_cifar100() -> onnx.ModelProto:
    b = GraphBuilder("vgg19_cifar100", (1, 3, 32, 32))
    x = b.flatten(_vgg19_features(b, b.input_name), "flatten")
    out = b.gemm(x, "classifier", 100, gain=_RELU_GAIN, out_name="logits")
    return b.finish(out, "CIFAR VGG19-BN (kuangliu/pytorch-cifar), 100 classes")


def vgg19_224_10() -> onnx.ModelProto:
    b = GraphBuilder("vgg19_224_10", (1, 3, 224, 224))
    x = b.flatten(_vgg19_features(b, b.input_name), "flatten")
    x = b.relu(b.gemm(x, "classifier.0", 512, gain=_RELU_GAIN), "classifier.1")
    out = b.gemm(x, "classifier.3", 10, gain=_RELU_GAIN, out_name="logits")
    return b.finish(out, "VGG19-BN at 224x224, head Linear(25088,512)-ReLU-Linear(512,10)")


_RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, first stride)


def resnet50_cifar100() -> onnx.ModelProto:
    b = GraphBuilder("resnet50_cifar100", (1, 3, 32, 32))
    x = b.conv_bn_act(b.input_name, ("conv1", "bn1", "relu"), 64, 3, gain=1.0)
    branch_scale = 1.0 / math.sqrt(sum(n for _, n, _ in _RESNET50_STAGES))
    for stage, (planes, blocks, first_stride) in enumerate(_RESNET50_STAGES, start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            stride = first_stride if i == 0 else 1
            y = b.conv_bn_act(x, (f"{p}.conv1", f"{p}.bn1", f"{p}.relu1"), planes, 1)
            y = b.conv_bn_act(y, (f"{p}.conv2", f"{p}.bn2", f"{p}.relu2"), planes, 3, stride)
            y = b.conv_bn_act(
                y, (f"{p}.conv3", f"{p}.bn3", None), 4 * planes, 1, gain=_RELU_GAIN * branch_scale
            )
            if stride != 1 or b.shapes[x][1] != 4 * planes:
                x = b.conv_bn_act(x, (f"{p}.shortcut.0", f"{p}.shortcut.1", None), 4 * planes, 1, stride)
            x = b.relu(b.add(y, x, f"{p}.add"), f"{p}.relu3")
    out = b.classifier_head(x, 100)
    return b.finish(out, "CIFAR ResNet50 (kuangliu/pytorch-cifar: 3x3 stem, no max-pool), 100 classes")


# kuangliu/pytorch-cifar MobileNet: int = out channels with stride 1, tuple = (out channels, stride).
_MOBILENETV1_CFG: list[int | tuple[int, int]] = [64, (128, 2), 128, (256, 2), 256, (512, 2)]
_MOBILENETV1_CFG += [512, 512, 512, 512, 512, (1024, 2), 1024]


def mobilenetv1_cifar100() -> onnx.ModelProto:
    b = GraphBuilder("mobilenetv1_cifar100", (1, 3, 32, 32))
    x = b.conv_bn_act(b.input_name, ("conv1", "bn1", "relu"), 32, 3, gain=1.0)
    for i, item in enumerate(_MOBILENETV1_CFG):
        cout, stride = (item, 1) if isinstance(item, int) else item
        p = f"layers.{i}"
        cin = b.shapes[x][1]
        x = b.conv_bn_act(x, (f"{p}.conv1", f"{p}.bn1", f"{p}.relu1"), cin, 3, stride, groups=cin)
        x = b.conv_bn_act(x, (f"{p}.conv2", f"{p}.bn2", f"{p}.relu2"), cout, 1)
    out = b.classifier_head(x, 100)
    return b.finish(out, "CIFAR MobileNetV1 (kuangliu/pytorch-cifar, stem stride 1), 100 classes")


# (expand ratio t, channels c, repeats n, first stride s), as in the MobileNetV2 paper / torchvision.
_MOBILENETV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenetv2_224() -> onnx.ModelProto:
    """torchvision ``mobilenet_v2()``: module paths ``features.<i>.conv.<j>[.<k>]`` as in its state_dict."""
    b = GraphBuilder("mobilenetv2_224", (1, 3, 224, 224))
    relu6 = b.relu6
    stem = ("features.0.0", "features.0.1", "features.0.2")
    x = b.conv_bn_act(b.input_name, stem, 32, 3, 2, gain=1.0, act=relu6)
    residual_blocks = sum(n - 1 for _, _, n, _ in _MOBILENETV2_CFG)
    branch_scale = 1.0 / math.sqrt(residual_blocks)
    idx = 1
    for t, c, n, s in _MOBILENETV2_CFG:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}.conv"
            cin = b.shapes[x][1]
            hidden = cin * t
            residual = stride == 1 and cin == c
            y, j = x, 0
            if t != 1:  # the input is a linear bottleneck (no ReLU), hence gain 1
                y = b.conv_bn_act(y, (f"{p}.0.0", f"{p}.0.1", f"{p}.0.2"), hidden, 1, gain=1.0, act=relu6)
                j = 1
            dw_gain = _RELU_GAIN if t != 1 else 1.0
            dw = (f"{p}.{j}.0", f"{p}.{j}.1", f"{p}.{j}.2")
            y = b.conv_bn_act(y, dw, hidden, 3, stride, groups=hidden, gain=dw_gain, act=relu6)
            gain = _RELU_GAIN * (branch_scale if residual else 1.0)
            y = b.conv_bn_act(y, (f"{p}.{j + 1}", f"{p}.{j + 2}", None), c, 1, gain=gain)
            x = b.add(x, y, f"features.{idx}.add") if residual else y
            idx += 1
    names = (f"features.{idx}.0", f"features.{idx}.1", f"features.{idx}.2")
    x = b.conv_bn_act(x, names, 1280, 1, gain=1.0, act=relu6)
    # classifier.0 is Dropout (identity in eval mode), classifier.1 the Linear.
    out = b.classifier_head(x, 1000, fc="classifier.1")
    return b.finish(out, "torchvision MobileNetV2 1.0, 224x224, 1000 classes, ReLU6 as Clip(0, 6)")


def tiny_cnn() -> onnx.ModelProto:
    """Small but op-diverse: dense, strided, depthwise and pointwise convs, a residual Add, 24/40 channels."""
    b = GraphBuilder("tiny_cnn", (1, 3, 32, 32))
    x = b.conv_bn_act(b.input_name, ("stem.conv", "stem.bn", "stem.relu"), 16, 3, gain=1.0)
    x = b.conv_bn_act(x, ("down1.conv", "down1.bn", "down1.relu"), 24, 3, stride=2)
    y = b.conv_bn_act(x, ("block.dw", "block.dw_bn", "block.dw_relu"), 24, 3, groups=24)
    y = b.conv_bn_act(y, ("block.pw", "block.pw_bn", None), 24, 1, gain=_RELU_GAIN / math.sqrt(2.0))
    x = b.relu(b.add(x, y, "block.add"), "block.relu")
    x = b.conv_bn_act(x, ("down2.conv", "down2.bn", "down2.relu"), 40, 3, stride=2)
    out = b.classifier_head(x, 10, pool="pool", fc="fc")
    return b.finish(out, "tiny smoke-test CNN for the nirc README")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "vgg19_cifar100": vgg19_cifar100,
    "resnet50_cifar100": resnet50_cifar100,
    "mobilenetv1_cifar100": mobilenetv1_cifar100,
    "vgg19_224_10": vgg19_224_10,
    "mobilenetv2_224": mobilenetv2_224,
    "tiny_cnn": tiny_cnn,
}


def pick(models: Mapping[str, Callable[[], onnx.ModelProto]], name: str) -> onnx.ModelProto:
    """Build ``models[name]``; shared by every builder script in examples/."""
    try:
        factory = models[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(models)}") from None
    return factory()


def build(name: str) -> onnx.ModelProto:
    """Build model ``name`` (a key of :data:`MODELS`); the result is identical on every call."""
    return pick(MODELS, name)


def parse_model_args(
    doc: str | None, models: Mapping[str, Callable[[], onnx.ModelProto]], argv: Sequence[str] | None
) -> tuple[list[str], Path]:
    """The command line every builder script shares: ``[-o DIR] [names...]``; creates DIR."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("-o", "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("names", nargs="*", metavar="name", help=f"models (default: all): {', '.join(models)}")
    args = parser.parse_args(argv)
    names: list[str] = args.names or list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(models)}")
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    return names, out_dir


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _fmt_size(nbytes: int) -> str:
    if nbytes < 1 << 20:
        return f"{nbytes / 1024:.1f} KB"
    return f"{nbytes / (1 << 20):.1f} MB"


def _fmt_ref(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    names, out_dir = parse_model_args(__doc__, MODELS, argv)

    header = f"{'model':<22} {'MACs (M)':>10} {'ref':>8} {'params (M)':>11} {'ref':>6} {'file':>10}"
    print(header)
    print("-" * len(header))
    for name in names:
        model = build(name)
        data = model.SerializeToString()
        path = out_dir / f"{name}.onnx"
        path.write_bytes(data)
        macs, params = count_macs_params(model)
        ref_macs, ref_params = REFERENCE.get(name, (None, None))
        print(
            f"{name:<22} {macs / 1e6:>10.1f} {_fmt_ref(ref_macs):>8} {params / 1e6:>11.3f} "
            f"{_fmt_ref(ref_params):>6} {_fmt_size(len(data)):>10}"
        )
    print(f"written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
