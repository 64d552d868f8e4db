"""Parametric model families the searcher builds as ONNX itself (random seeded weights, no torch).

Why these: they are the families an Ethos-U user picks from (the seed tool's
"Quick Search" lists YOLO n/s/m/l/x by input size), and each varies along the
axes that move Vela's latency differently: width (weight traffic and MAC-array
fill: 16-channel bricks), resolution (feature-map traffic and SRAM spills),
depth, and block type (a fused inverted bottleneck runs a dense 3x3 conv where
a depthwise one runs a 1x1 expand and a depthwise 3x3; on the NPU the fused
one can be as fast with far more parameters).

A :class:`Candidate` is (family, variant, resolution); its ONNX is a pure
function of those (plus the class count), so the cost cache, the Ray workers
and the serial path all see byte-identical models. Weights are random: the
recommended ONNX files are for the user's training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import onnx

from nirc.errors import NircError
from nirc.search.graph import RELU_GAIN, GraphBuilder

Task = Literal["classification", "detection"]
Params = Mapping[str, float]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channels rounded to ``divisor`` as MobileNet/EfficientNet do (never below 90% of ``value``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class Family:
    """A family: its task, named variants (parameter sets) and the function that builds one.

    Attributes:
        name: CLI name (``--families``).
        task: what the models do.
        variants: variant name -> parameters, smallest first.
        build: ``(model name, parameters, resolution, classes) -> ONNX``.
        doc: one line for ``nirc search --list-families``.
    """

    name: str
    task: Task
    variants: Mapping[str, Params]
    build: Callable[[str, Params, int, int], onnx.ModelProto]
    doc: str


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    family: str
    variant: str
    resolution: int
    classes: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.variant}-{self.resolution}"

    def build(self) -> onnx.ModelProto:
        family = FAMILIES[self.family]
        return family.build(self.name, family.variants[self.variant], self.resolution, self.classes)


# ---------------------------------------------------------------------------------------------------
# Inverted bottlenecks: MobileNetV2, EfficientNet-lite, fused-vs-depthwise per stage
# ---------------------------------------------------------------------------------------------------


def _inverted_bottleneck(
    b: GraphBuilder, x: str, name: str, cout: int, expand: int, kernel: int, stride: int, fused: bool, scale: float
) -> str:
    """MBConv (1x1 expand -> kxk depthwise -> 1x1 project) or its fused form (kxk expand -> 1x1 project).

    ReLU6 as in MobileNetV2 and EfficientNet-lite (no squeeze-excite, no swish: both are costly on
    Ethos-U and the lite variants drop them for that reason). Residual when shapes allow.
    """
    cin = b.shapes[x][1]
    hidden = make_divisible(cin * expand)
    residual = stride == 1 and cin == cout
    y = x
    if fused:
        y = b.conv_bn_act(y, (f"{name}.fused", f"{name}.fused_bn", f"{name}.fused_act"), hidden, kernel, stride,
                          gain=1.0, act=b.relu6)  # fmt: skip
    else:
        if expand != 1:
            y = b.conv_bn_act(y, (f"{name}.expand", f"{name}.expand_bn", f"{name}.expand_act"), hidden, 1,
                              gain=1.0, act=b.relu6)  # fmt: skip
        y = b.conv_bn_act(y, (f"{name}.dw", f"{name}.dw_bn", f"{name}.dw_act"), hidden, kernel, stride,
                          groups=hidden, gain=RELU_GAIN if expand != 1 else 1.0, act=b.relu6)  # fmt: skip
    gain = RELU_GAIN * (scale if residual else 1.0)
    y = b.conv_bn_act(y, (f"{name}.project", f"{name}.project_bn", None), cout, 1, gain=gain)
    return b.add(x, y, f"{name}.add") if residual else y


# (expand, channels, repeats, stride, kernel) per stage
_MOBILENETV2 = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3),
                (6, 160, 3, 2, 3), (6, 320, 1, 1, 3))  # fmt: skip
_EFFICIENTNET_LITE = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                      (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))  # fmt: skip


def _mbconv_net(
    name: str,
    resolution: int,
    classes: int,
    stages: Sequence[tuple[int, int, int, int, int]],
    *,
    width: float,
    depth: float = 1.0,
    fused_stages: int = 0,
    stem: int = 32,
    head: int = 1280,
    scale_ends: bool = True,
) -> onnx.ModelProto:
    """The shared skeleton: stem 3x3/2, inverted-bottleneck stages, 1x1 head conv, classifier.

    ``fused_stages``: the first N stages after the first use fused bottlenecks (EfficientNetV2's
    recipe: fused where the feature map is large and the channels few). ``scale_ends``: MobileNetV2
    scales the stem and head with the width; EfficientNet-lite keeps them fixed.
    """
    b = GraphBuilder(name, (1, 3, resolution, resolution))
    stem_c = make_divisible(stem * width) if scale_ends else stem
    x = b.conv_bn_act(b.input_name, ("stem", "stem_bn", "stem_act"), stem_c, 3, 2, gain=1.0, act=b.relu6)
    repeats = [max(1, math.ceil(n * depth)) for _, _, n, _, _ in stages]
    residual_blocks = sum(r - 1 for r in repeats)
    scale = 1.0 / math.sqrt(max(1, residual_blocks))
    for s, ((expand, channels, _, stride, kernel), n) in enumerate(zip(stages, repeats, strict=True)):
        cout = make_divisible(channels * width)
        fused = 1 <= s <= fused_stages
        for i in range(n):
            x = _inverted_bottleneck(b, x, f"blocks.{s}.{i}", cout, expand, kernel, stride if i == 0 else 1, fused,
                                     scale)  # fmt: skip
    head_c = make_divisible(head * max(1.0, width)) if scale_ends else head
    x = b.conv_bn_act(x, ("head", "head_bn", "head_act"), head_c, 1, gain=1.0, act=b.relu6)
    return b.finish(b.classifier_head(x, classes, fc="classifier"), f"{name}: random weights (nirc search)")


def _mobilenetv2(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    return _mbconv_net(name, resolution, classes, _MOBILENETV2, width=p["width"])


def _efficientnet_lite(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    return _mbconv_net(name, resolution, classes, _EFFICIENTNET_LITE, width=p["width"], depth=p["depth"],
                       scale_ends=False)  # fmt: skip


def _fused_ib(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    return _mbconv_net(name, resolution, classes, _EFFICIENTNET_LITE, width=p["width"],
                       fused_stages=int(p["fused"]), scale_ends=False)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# ResNet (basic blocks) and RepVGG (deploy form)
# ---------------------------------------------------------------------------------------------------


def _resnet(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    """torchvision-style ResNet with basic blocks; the stem's 3x3/2 max-pool is a 2x2/2 one (same output size)."""
    depths = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[int(p["depth"])]
    width = p["width"]
    b = GraphBuilder(name, (1, 3, resolution, resolution))
    x = b.conv_bn_act(b.input_name, ("conv1", "bn1", "relu"), make_divisible(64 * width), 7, 2, gain=1.0)
    x = b.maxpool(x, "maxpool")
    scale = 1.0 / math.sqrt(sum(depths))
    for stage, blocks in enumerate(depths):
        planes = make_divisible(64 * 2**stage * width)
        for i in range(blocks):
            q = f"layer{stage + 1}.{i}"
            stride = 2 if stage > 0 and i == 0 else 1
            y = b.conv_bn_act(x, (f"{q}.conv1", f"{q}.bn1", f"{q}.relu1"), planes, 3, stride)
            y = b.conv_bn_act(y, (f"{q}.conv2", f"{q}.bn2", None), planes, 3, gain=RELU_GAIN * scale)
            if stride != 1 or b.shapes[x][1] != planes:
                x = b.conv_bn_act(x, (f"{q}.downsample.0", f"{q}.downsample.1", None), planes, 1, stride, gain=1.0)
            x = b.relu(b.add(x, y, f"{q}.add"), f"{q}.relu2")
    return b.finish(b.classifier_head(x, classes, fc="fc"), f"{name}: random weights (nirc search)")


def _repvgg(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    """RepVGG in its deploy form (one 3x3 conv + ReLU per block): what runs after reparameterisation.

    Widths ``min(64, 64a), 64a, 128a, 256a, 512b`` and depths ``1, d1..d4`` as in the paper (A: 2-4-14-1,
    B: 4-6-16-1). Train with the three-branch form; the cost is the same after merging the branches.
    """
    a, wide = p["a"], p["b"]
    depths = (1, 2, 4, 14, 1) if p["deep"] == 0 else (1, 4, 6, 16, 1)
    widths = (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * wide))
    b = GraphBuilder(name, (1, 3, resolution, resolution))
    x = b.input_name
    for stage, (blocks, channels) in enumerate(zip(depths, widths, strict=True)):
        for i in range(blocks):
            q = f"stage{stage}.{i}"
            x = b.conv_bn_act(x, (f"{q}.conv", f"{q}.bn", f"{q}.relu"), channels, 3, 2 if i == 0 else 1,
                              gain=1.0 if x == b.input_name else RELU_GAIN)  # fmt: skip
    return b.finish(b.classifier_head(x, classes, fc="linear"), f"{name}: random weights (nirc search)")


# ---------------------------------------------------------------------------------------------------
# GhostNet
# ---------------------------------------------------------------------------------------------------

# (kernel, expansion channels, out channels, squeeze-excite, stride) per block, GhostNet 1.0
_GHOSTNET = ((3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2), (5, 120, 40, 1, 1),
             (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 1, 1),
             (3, 672, 112, 1, 1), (5, 672, 160, 1, 2), (5, 960, 160, 0, 1), (5, 960, 160, 1, 1), (5, 960, 160, 0, 1),
             (5, 960, 160, 1, 1))  # fmt: skip


def _ghost_module(b: GraphBuilder, x: str, name: str, cout: int, relu: bool) -> str:
    """Half the channels from a 1x1 conv, the other half from a cheap 3x3 depthwise conv on them, concatenated."""
    half = cout // 2
    act = f"{name}.primary_conv.2" if relu else None
    y = b.conv_bn_act(x, (f"{name}.primary_conv.0", f"{name}.primary_conv.1", act), half, 1, gain=1.0)
    act = f"{name}.cheap_operation.2" if relu else None
    z = b.conv_bn_act(y, (f"{name}.cheap_operation.0", f"{name}.cheap_operation.1", act), half, 3, groups=half,
                      gain=1.0)  # fmt: skip
    return b.concat([y, z], f"{name}.cat")


def _squeeze_excite(b: GraphBuilder, x: str, name: str) -> str:
    """GAP -> 1x1 reduce (/4) -> ReLU -> 1x1 expand -> HardSigmoid gate, multiplied into ``x``."""
    c = b.shapes[x][1]
    y = b.global_avg_pool(x, f"{name}.avg_pool")
    y = b.relu(b.conv_bias(y, f"{name}.conv_reduce", make_divisible(c / 4, 4), 1, gain=RELU_GAIN), f"{name}.act1")
    y = b.conv_bias(y, f"{name}.conv_expand", c, 1)
    return b.binary("Mul", x, b.hardsigmoid(y, f"{name}.gate"), f"{name}.mul")


def _ghostnet(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    """GhostNet (Han et al. 2020, timm's ghostnet_100 layout) with a width multiplier."""
    width = p["width"]
    b = GraphBuilder(name, (1, 3, resolution, resolution))
    x = b.conv_bn_act(b.input_name, ("conv_stem", "bn1", "act1"), make_divisible(16 * width, 4), 3, 2, gain=1.0)
    for i, (kernel, mid, channels, se, stride) in enumerate(_GHOSTNET):
        q = f"blocks.{i}"
        cin, cout = b.shapes[x][1], make_divisible(channels * width, 4)
        y = _ghost_module(b, x, f"{q}.ghost1", make_divisible(mid * width, 4), relu=True)
        if stride > 1:
            y = b.bn(b.conv(y, f"{q}.conv_dw", b.shapes[y][1], kernel, stride, groups=b.shapes[y][1], gain=1.0),
                     f"{q}.bn_dw")  # fmt: skip
        if se:
            y = _squeeze_excite(b, y, f"{q}.se")
        y = _ghost_module(b, y, f"{q}.ghost2", cout, relu=False)
        if stride == 1 and cin == cout:
            x = b.add(x, y, f"{q}.add")
        else:
            s = b.bn(b.conv(x, f"{q}.shortcut.0", cin, kernel, stride, groups=cin, gain=1.0), f"{q}.shortcut.1")
            s = b.bn(b.conv(s, f"{q}.shortcut.2", cout, 1, gain=1.0), f"{q}.shortcut.3")
            x = b.add(s, y, f"{q}.add")
    x = b.conv_bn_act(x, ("blocks.16.conv", "blocks.16.bn1", "blocks.16.act1"), make_divisible(960 * width, 4), 1)
    x = b.global_avg_pool(x, "global_pool")
    x = b.relu(b.conv_bias(x, "conv_head", 1280, 1, gain=RELU_GAIN), "act2")
    x = b.flatten(x, "flatten")
    logits = b.gemm(x, "classifier", classes, gain=RELU_GAIN, out_name="logits")
    return b.finish(logits, f"{name}: random weights (nirc search)")


# ---------------------------------------------------------------------------------------------------
# YOLO (v8-style)
# ---------------------------------------------------------------------------------------------------


def c2f(b: GraphBuilder, x: str, name: str, cout: int, blocks: int = 1, shortcut: bool = True) -> str:
    """Ultralytics C2f: cv1 1x1 -> Split in two -> bottlenecks chained on the second half -> Concat all -> cv2."""
    hidden = cout // 2
    y = b.conv_bn_silu(x, f"{name}.cv1", 2 * hidden, 1)
    parts = b.split(y, f"{name}.split", 2)
    last = parts[-1]
    for i in range(blocks):
        m = b.conv_bn_silu(last, f"{name}.m.{i}.cv1", hidden, 3)
        m = b.conv_bn_silu(m, f"{name}.m.{i}.cv2", hidden, 3)
        last = b.binary("Add", last, m, f"{name}.m.{i}.add") if shortcut else m
        parts.append(last)
    return b.conv_bn_silu(b.concat(parts, f"{name}.cat"), f"{name}.cv2", cout, 1)


def sppf(b: GraphBuilder, x: str, name: str, cout: int) -> str:
    """SPPF: cv1 1x1 halves the channels, three chained 5x5/1 max-pools, Concat of all four, cv2 1x1."""
    y = b.conv_bn_silu(x, f"{name}.cv1", b.shapes[x][1] // 2, 1)
    pools = [y]
    for i in range(3):
        pools.append(b.maxpool_same(pools[-1], f"{name}.m.{i}", 5))
    return b.conv_bn_silu(b.concat(pools, f"{name}.cat"), f"{name}.cv2", cout, 1)


def _yolo(name: str, p: Params, resolution: int, classes: int) -> onnx.ModelProto:
    """YOLOv8-style detector (backbone, SPPF, PAN neck, decoupled head) scaled like yolov8n/s/m.

    Outputs the raw head maps (box: 4 x 16 DFL bins, class logits) at strides 8, 16, 32; the DFL
    decode, sigmoid and NMS stay on the host, as in every Ethos-U deployment of YOLO.
    """
    depth, width, max_c = p["depth"], p["width"], int(p["max_channels"])

    def ch(c: int) -> int:
        return make_divisible(min(c, max_c) * width)

    def n(k: int) -> int:
        return max(1, round(k * depth))

    b = GraphBuilder(name, (1, 3, resolution, resolution), input_name="images")
    x = b.conv_bn_silu(b.input_name, "model.0", ch(64), 3, 2)
    x = b.conv_bn_silu(x, "model.1", ch(128), 3, 2)
    x = c2f(b, x, "model.2", ch(128), n(3))
    x = b.conv_bn_silu(x, "model.3", ch(256), 3, 2)
    p3 = c2f(b, x, "model.4", ch(256), n(6))
    x = b.conv_bn_silu(p3, "model.5", ch(512), 3, 2)
    p4 = c2f(b, x, "model.6", ch(512), n(6))
    x = b.conv_bn_silu(p4, "model.7", ch(1024), 3, 2)
    x = c2f(b, x, "model.8", ch(1024), n(3))
    p5 = sppf(b, x, "model.9", ch(1024))
    x = b.concat([b.upsample2(p5, "model.10"), p4], "model.11")
    n4 = c2f(b, x, "model.12", ch(512), n(3), shortcut=False)
    x = b.concat([b.upsample2(n4, "model.13"), p3], "model.14")
    o3 = c2f(b, x, "model.15", ch(256), n(3), shortcut=False)
    x = b.concat([b.conv_bn_silu(o3, "model.16", ch(256), 3, 2), n4], "model.17")
    o4 = c2f(b, x, "model.18", ch(512), n(3), shortcut=False)
    x = b.concat([b.conv_bn_silu(o4, "model.19", ch(512), 3, 2), p5], "model.20")
    o5 = c2f(b, x, "model.21", ch(1024), n(3), shortcut=False)
    box_c = max(16, b.shapes[o3][1] // 4, 64)
    cls_c = max(b.shapes[o3][1], min(classes, 100))
    outputs = []
    for level, feat in zip((3, 4, 5), (o3, o4, o5), strict=True):
        y = b.conv_bn_silu(feat, f"model.22.cv2.{level}.0", box_c, 3)
        y = b.conv_bn_silu(y, f"model.22.cv2.{level}.1", box_c, 3)
        outputs.append(b.conv_bias(y, f"model.22.cv2.{level}.2", 64, 1, output=f"box_p{level}"))
        y = b.conv_bn_silu(feat, f"model.22.cv3.{level}.0", cls_c, 3)
        y = b.conv_bn_silu(y, f"model.22.cv3.{level}.1", cls_c, 3)
        outputs.append(b.conv_bias(y, f"model.22.cv3.{level}.2", classes, 1, output=f"cls_p{level}"))
    return b.finish(outputs, f"{name}: YOLOv8-style detector, random weights (nirc search)")


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("mobilenetv2", "classification",
               {f"w{w}": {"width": w} for w in (0.35, 0.5, 0.75, 1.0, 1.4)}, _mobilenetv2,
               "MobileNetV2, width 0.35-1.4 (inverted bottlenecks, ReLU6)"),
        Family("efficientnet-lite", "classification",
               {"lite0": {"width": 1.0, "depth": 1.0}, "lite1": {"width": 1.0, "depth": 1.1},
                "lite2": {"width": 1.1, "depth": 1.2}, "lite3": {"width": 1.2, "depth": 1.4}},
               _efficientnet_lite, "EfficientNet-lite0..3 (MBConv 3x3/5x5, no SE, ReLU6, fixed stem/head)"),
        Family("fused-ib", "classification",
               {f"f{k}-w{w}": {"fused": k, "width": w} for w in (0.5, 1.0) for k in (1, 2, 3)},
               _fused_ib, "EfficientNet-lite0 with its first 1-3 stages as fused inverted bottlenecks"),
        Family("resnet", "classification",
               {"d10-w0.5": {"depth": 10, "width": 0.5}, "d18-w0.5": {"depth": 18, "width": 0.5},
                "d10-w1.0": {"depth": 10, "width": 1.0}, "d18-w1.0": {"depth": 18, "width": 1.0},
                "d34-w1.0": {"depth": 34, "width": 1.0}},
               _resnet, "ResNet-10/18/34 (basic blocks), width 0.5-1.0"),
        Family("repvgg", "classification",
               {"a0": {"a": 0.75, "b": 2.5, "deep": 0}, "a1": {"a": 1.0, "b": 2.5, "deep": 0},
                "b0": {"a": 1.0, "b": 2.5, "deep": 1}},
               _repvgg, "RepVGG-A0/A1/B0 in deploy form (plain 3x3 conv + ReLU)"),
        Family("ghostnet", "classification", {f"w{w}": {"width": w} for w in (0.5, 1.0, 1.3)}, _ghostnet,
               "GhostNet, width 0.5-1.3 (ghost modules, squeeze-excite with a hard-sigmoid gate)"),
        Family("yolo", "detection",
               {"n": {"depth": 0.33, "width": 0.25, "max_channels": 1024},
                "s": {"depth": 0.33, "width": 0.5, "max_channels": 1024},
                "m": {"depth": 0.67, "width": 0.75, "max_channels": 768}},
               _yolo, "YOLOv8-style n/s/m (C2f, SPPF, PAN, decoupled head; decode on the host)"),
    )
}  # fmt: skip
"""Every family, by CLI name."""


def families_for(task: Task, names: Sequence[str] | None = None) -> list[Family]:
    """The families of ``task`` (all, or those named); unknown or wrong-task names are a NircError."""
    if names is None:
        return [f for f in FAMILIES.values() if f.task == task]
    out: list[Family] = []
    for name in names:
        family = FAMILIES.get(name)
        if family is None:
            raise NircError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
        if family.task != task:
            raise NircError(f"family {name!r} is for {family.task}, not {task}")
        out.append(family)
    return out


def default_resolutions(task: Task, input_size: int) -> list[int]:
    """The input size and smaller ones (x0.75, x0.5), multiples of 32, at least 64 (128 for detection).

    Why smaller only: the user's data comes at ``input_size``; a smaller input is the cheapest latency
    knob (the seed tool recommends it first), a larger one is never what a latency budget asks for.
    """
    floor = 128 if task == "detection" else 64
    sizes = {input_size}
    for factor in (0.75, 0.5):
        sizes.add(max(floor, round(input_size * factor / 32) * 32))
    return sorted((s for s in sizes if s <= input_size), reverse=True)


def candidates(
    task: Task,
    input_size: int,
    *,
    families: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    resolutions: Sequence[int] | None = None,
    classes: int | None = None,
) -> list[Candidate]:
    """The search space, in a fixed order (family, variant, resolution descending).

    ``variants`` keeps only the named variants (of any family); ``classes`` defaults to 1000 for
    classification and 80 for detection.
    """
    if input_size < 32 or input_size % 32:
        raise NircError(f"--input-size must be a positive multiple of 32, got {input_size}")
    sizes = list(resolutions) if resolutions else default_resolutions(task, input_size)
    bad = [s for s in sizes if s < 32 or s % 32]
    if bad:
        raise NircError(f"resolutions must be positive multiples of 32, got {bad[0]}")
    count = classes if classes is not None else (1000 if task == "classification" else 80)
    out: list[Candidate] = []
    for family in families_for(task, families):
        for variant in family.variants:
            if variants is None or variant in variants:
                out.extend(Candidate(family.name, variant, size, count) for size in sizes)
    if not out:
        raise NircError(f"no candidates: variants {list(variants or [])} match none of the families chosen")
    return out
