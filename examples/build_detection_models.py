#!/usr/bin/env python3
"""Build small detection/mobile/transformer-style CNNs as deterministic, random-weight ONNX files.

Why this exists: the seed benchmark models (``build_models.py``) are plain conv/BN/ReLU stacks that the
NPU runs whole.  The graphs here are the shapes that *do not* map onto Ethos-U as exported: SiLU, channel
splits and concats, SPPF max-pool chains and nearest-neighbour upsampling (YOLO), channel shuffles spelled
Reshape->Transpose->Reshape (ShuffleNet), and NHWC permutes around LayerNorm / Linear / GELU (ConvNeXt).
nirc's legalization tests compile them end to end and check that nothing falls back to the CPU, so they
are kept small (64x64 inputs, <= 128 channels) to compile in seconds.

Determinism follows ``build_models.py`` (whose :class:`GraphBuilder` is reused; run this file as a script,
or import it with ``examples/`` on the path as nirc's tests do): every initializer is
drawn from its own generator seeded with ``crc32("<model>/<tensor>")``, the IR version and producer are
pinned, and nothing host- or time-dependent is stored, so two builds are byte-identical.

Graph conventions are those of a PyTorch eval-mode export at opset 18 (NCHW, float32, batch 1):

* SiLU is ``Mul(x, Sigmoid(x))``, GELU is the exact-erf form ``0.5 * x * (1 + Erf(x / sqrt(2)))``;
* ``torch.chunk(x, 2, dim=1)`` is ``Split`` with ``num_outputs=2``; ``nn.Upsample(scale_factor=2)`` is
  ``Resize(mode=nearest, coordinate_transformation_mode=asymmetric, nearest_mode=floor)`` with scales;
* ConvNeXt's channels-first LayerNorm is spelled out (``ReduceMean``/``Sub``/``Pow``/``Sqrt``/``Div``),
  its ``nn.LayerNorm`` after ``permute(0, 2, 3, 1)`` is the ``LayerNormalization`` op, and its
  ``nn.Linear`` on a 4-D tensor is ``MatMul`` + ``Add``.

Models:

``yolo_tiny``
    YOLOv8-style detector at 64x64: Conv+BN+SiLU blocks, C2f blocks (Split -> bottlenecks -> Concat),
    SPPF (three chained 5x5 stride-1 MaxPools + Concat), a PAN neck with two nearest x2 Resizes + Concats
    and two strided downsamples, and three 1x1 detection heads (4 box + 4 class channels) at strides
    8, 16 and 32.
``shufflenet_tiny``
    ShuffleNetV2-style classifier at 64x64: stem conv + max-pool, two stages of a stride-2 unit (two
    branches, depthwise convs, Concat, channel shuffle) and a stride-1 unit (channel Split, branch,
    Concat, channel shuffle), 1x1 conv, global pool, Linear to 10 classes.
``convnext_tiny_ln``
    ConvNeXt-style classifier at 64x64: 4x4 stride-4 patchify stem + channels-first LayerNorm, two
    stages of one block each (7x7 depthwise conv, permute to NHWC, LayerNormalization, Linear x4,
    GELU, Linear, layer scale, permute back, residual), a LayerNorm + 2x2 stride-2 conv downsample,
    global mean, LayerNormalization and a Linear head.

Usage::

    python examples/build_detection_models.py -o out            # all three -> out/<name>.onnx
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from build_models import (  # examples/ is the script's dir
    _RELU_GAIN,
    GraphBuilder,
    parse_model_args,
    pick,
)

from nirc.search.families import c2f as _c2f
from nirc.search.families import sppf as _sppf

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "models"
Shape = tuple[int, ...]


class Builder(GraphBuilder):
    """:class:`build_models.GraphBuilder` plus the ops these architectures need, with shapes tracked."""

    doc_source = "examples/build_detection_models.py"

    def const_i64(self, name: str, values: Sequence[int]) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def reshape(self, x: str, name: str, shape: Shape) -> str:
        if math.prod(shape) != math.prod(self.shapes[x]):
            raise ValueError(f"{name}: cannot reshape {self.shapes[x]} to {shape}")
        return self._node("Reshape", [x, self.const_i64(f"{name}.shape", shape)], name, tuple(shape))

    def transpose(self, x: str, name: str, perm: Sequence[int]) -> str:
        shape = tuple(self.shapes[x][p] for p in perm)
        return self._node("Transpose", [x], name, shape, perm=list(perm))

    def channel_shuffle(self, x: str, name: str, groups: int = 2) -> str:
        """torchvision's ``channel_shuffle``: view(n, g, c/g, h, w) -> transpose(1, 2) -> view(n, c, h, w)."""
        n, c, h, w = self.shapes[x]
        y = self.reshape(x, f"{name}.view1", (n, groups, c // groups, h, w))
        y = self.transpose(y, f"{name}.transpose", (0, 2, 1, 3, 4))
        return self.reshape(y, f"{name}.view2", (n, c, h, w))

    def unary(self, op: str, x: str, name: str) -> str:
        return self._node(op, [x], name, self.shapes[x])

    def scalar(self, name: str, value: float) -> str:
        return self._add_init(name, np.array(value, np.float32))

    def reduce_mean(self, x: str, name: str, axes: Sequence[int], keepdims: bool = True) -> str:
        rank = len(self.shapes[x])
        norm = {a % rank for a in axes}
        shape = tuple(1 if i in norm else d for i, d in enumerate(self.shapes[x]) if keepdims or i not in norm)
        axes_t = self.const_i64(f"{name}.axes", list(axes))
        return self._node("ReduceMean", [x, axes_t], name, shape, keepdims=int(keepdims))

    def layernorm_channels_first(self, x: str, name: str, eps: float = 1e-6) -> str:
        """ConvNeXt's ``LayerNorm(data_format="channels_first")``, spelled out as PyTorch exports it."""
        c = self.shapes[x][1]
        u = self.reduce_mean(x, f"{name}.mean", [1])
        d = self.binary("Sub", x, u, f"{name}.sub")
        sq = self.binary("Pow", d, self.scalar(f"{name}.two", 2.0), f"{name}.pow")
        var = self.reduce_mean(sq, f"{name}.var", [1])
        std = self.unary("Sqrt", self.binary("Add", var, self.scalar(f"{name}.eps", eps), f"{name}.add_eps"),
                         f"{name}.sqrt")  # fmt: skip
        y = self.binary("Div", d, std, f"{name}.div")
        gamma = self.uniform(f"{name}.weight", (c, 1, 1), 0.8, 1.2)
        beta = self.normal(f"{name}.bias", (c, 1, 1), 0.0, 0.05)
        return self.binary("Add", self.binary("Mul", y, gamma, f"{name}.scale"), beta, f"{name}.shift")

    def layernorm(self, x: str, name: str, eps: float = 1e-6) -> str:
        """``nn.LayerNorm(last dim)``: the opset-17+ ``LayerNormalization`` op."""
        c = self.shapes[x][-1]
        gamma = self.uniform(f"{name}.weight", (c,), 0.8, 1.2)
        beta = self.normal(f"{name}.bias", (c,), 0.0, 0.05)
        return self._node("LayerNormalization", [x, gamma, beta], name, self.shapes[x], axis=-1, epsilon=eps)

    def linear(self, x: str, name: str, out_features: int, gain: float = 1.0) -> str:
        """``nn.Linear`` on an N-D tensor: MatMul(x, W^T) + b, as PyTorch exports it."""
        shape = self.shapes[x]
        cin = shape[-1]
        weight = self.normal(f"{name}.weight_t", (cin, out_features), 0.0, gain / math.sqrt(cin))
        bias = self.normal(f"{name}.bias", (out_features,), 0.0, 0.05)
        y = self._node("MatMul", [x, weight], f"{name}.matmul", (*shape[:-1], out_features))
        return self._node("Add", [y, bias], name, (*shape[:-1], out_features))

    def gelu(self, x: str, name: str) -> str:
        """Exact GELU as exported at opset 18: ``x * 0.5 * (1 + erf(x / sqrt(2)))``."""
        y = self.binary("Div", x, self.scalar(f"{name}.sqrt2", math.sqrt(2.0)), f"{name}.div")
        y = self.unary("Erf", y, f"{name}.erf")
        y = self.binary("Add", y, self.scalar(f"{name}.one", 1.0), f"{name}.add")
        y = self.binary("Mul", x, y, f"{name}.mul")
        return self.binary("Mul", y, self.scalar(f"{name}.half", 0.5), name)

    def finish_multi(self, outputs: Sequence[str], doc: str) -> onnx.ModelProto:
        """Like ``finish`` but with several graph outputs."""
        return self.finish(outputs, doc)


# ---------------------------------------------------------------------------------------------------
# YOLO
# ---------------------------------------------------------------------------------------------------


def yolo_tiny() -> onnx.ModelProto:
    """YOLOv8-n-like detector at 64x64 (widths 8..64); outputs ``head_p3``, ``head_p4``, ``head_p5``."""
    b = Builder("yolo_tiny", (1, 3, 64, 64), input_name="images")
    x = b.conv_bn_silu(b.input_name, "model.0", 8, 3, 2)  # /2
    x = b.conv_bn_silu(x, "model.1", 16, 3, 2)  # /4
    x = _c2f(b, x, "model.2", 16)
    x = b.conv_bn_silu(x, "model.3", 32, 3, 2)  # /8
    p3 = _c2f(b, x, "model.4", 32)
    x = b.conv_bn_silu(p3, "model.5", 64, 3, 2)  # /16
    p4 = _c2f(b, x, "model.6", 64)
    x = b.conv_bn_silu(p4, "model.7", 64, 3, 2)  # /32
    x = _c2f(b, x, "model.8", 64)
    p5 = _sppf(b, x, "model.9", 64)
    # PAN neck: top-down with nearest x2 upsampling, then bottom-up with strided convs.
    x = b.concat([b.upsample2(p5, "model.10"), p4], "model.11")
    n4 = _c2f(b, x, "model.12", 64, shortcut=False)
    x = b.concat([b.upsample2(n4, "model.13"), p3], "model.14")
    o3 = _c2f(b, x, "model.15", 32, shortcut=False)
    x = b.concat([b.conv_bn_silu(o3, "model.16", 32, 3, 2), n4], "model.17")
    o4 = _c2f(b, x, "model.18", 64, shortcut=False)
    x = b.concat([b.conv_bn_silu(o4, "model.19", 64, 3, 2), p5], "model.20")
    o5 = _c2f(b, x, "model.21", 64, shortcut=False)
    heads = []
    for level, feat in zip((3, 4, 5), (o3, o4, o5), strict=True):
        y = b.conv_bn_silu(feat, f"model.22.cv.{level}.0", 32, 3)
        heads.append(b.conv_bias(y, f"model.22.cv.{level}.1", 8, 1, output=f"head_p{level}"))
    return b.finish_multi(heads, "YOLOv8-style detector (C2f, SPPF, PAN, 3 heads), 64x64, random weights")


# ---------------------------------------------------------------------------------------------------
# ShuffleNet
# ---------------------------------------------------------------------------------------------------


def _conv_bn(b: Builder, x: str, name: str, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> str:  # fmt: skip
    gain = _RELU_GAIN if relu else 1.0
    y = b.bn(b.conv(x, f"{name}.conv", cout, kernel, stride, groups, gain), f"{name}.bn")
    return b.relu(y, f"{name}.relu") if relu else y


def _shuffle_unit(b: Builder, x: str, name: str, cout: int, stride: int) -> str:
    """torchvision ``InvertedResidual`` of ShuffleNetV2."""
    branch = cout // 2
    if stride == 1:
        left, right = b.split(x, f"{name}.chunk", 2)
    else:
        cin = b.shapes[x][1]
        left = _conv_bn(b, x, f"{name}.branch1.0", cin, 3, stride, groups=cin, relu=False)
        left = _conv_bn(b, left, f"{name}.branch1.2", branch, 1)
        right = x
    y = _conv_bn(b, right, f"{name}.branch2.0", branch, 1)
    y = _conv_bn(b, y, f"{name}.branch2.3", branch, 3, stride, groups=branch, relu=False)
    y = _conv_bn(b, y, f"{name}.branch2.5", branch, 1)
    return b.channel_shuffle(b.concat([left, y], f"{name}.cat"), f"{name}.shuffle")


def shufflenet_tiny() -> onnx.ModelProto:
    """ShuffleNetV2-like classifier at 64x64: stages of 48 and 96 channels, 10 classes."""
    b = Builder("shufflenet_tiny", (1, 3, 64, 64))
    x = _conv_bn(b, b.input_name, "conv1", 24, 3, 2)
    n, c, h, w = b.shapes[x]
    x = b._node("MaxPool", [x], "maxpool", (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1), kernel_shape=[3, 3],
                pads=[1, 1, 1, 1], strides=[2, 2])  # fmt: skip
    for stage, cout in ((2, 48), (3, 96)):
        x = _shuffle_unit(b, x, f"stage{stage}.0", cout, 2)
        x = _shuffle_unit(b, x, f"stage{stage}.1", cout, 1)
    x = _conv_bn(b, x, "conv5", 128, 1)
    out = b.classifier_head(x, 10, pool="pool", fc="fc")
    return b.finish(out, "ShuffleNetV2-style classifier (split, shuffle, depthwise, concat), 64x64")


# ---------------------------------------------------------------------------------------------------
# ConvNeXt
# ---------------------------------------------------------------------------------------------------


def _convnext_block(b: Builder, x: str, name: str) -> str:
    """dwconv 7x7 -> permute to NHWC -> LayerNorm -> Linear(4C) -> GELU -> Linear(C) -> gamma -> permute back -> +x."""
    c = b.shapes[x][1]
    y = b.conv_bias(x, f"{name}.dwconv", c, 7, groups=c)
    y = b.transpose(y, f"{name}.permute1", (0, 2, 3, 1))
    y = b.layernorm(y, f"{name}.norm")
    y = b.linear(y, f"{name}.pwconv1", 4 * c)
    y = b.gelu(y, f"{name}.act")
    y = b.linear(y, f"{name}.pwconv2", c, gain=0.5)
    y = b.binary("Mul", y, b.uniform(f"{name}.gamma", (c,), 0.5, 1.0), f"{name}.layer_scale")
    y = b.transpose(y, f"{name}.permute2", (0, 3, 1, 2))
    return b.binary("Add", x, y, f"{name}.add")


def convnext_tiny_ln() -> onnx.ModelProto:
    """ConvNeXt-like classifier at 64x64 (widths 32, 64), LayerNorm + GELU, 10 classes."""
    b = Builder("convnext_tiny_ln", (1, 3, 64, 64))
    x = b.conv_bias(b.input_name, "downsample_layers.0.0", 32, 4, stride=4, pad=0)
    x = b.layernorm_channels_first(x, "downsample_layers.0.1")
    x = _convnext_block(b, x, "stages.0.0")
    x = b.layernorm_channels_first(x, "downsample_layers.1.0")
    x = b.conv_bias(x, "downsample_layers.1.1", 64, 2, stride=2, pad=0)
    x = _convnext_block(b, x, "stages.1.0")
    x = b.reduce_mean(x, "pool", [-2, -1], keepdims=False)
    x = b.layernorm(x, "norm")
    w = b.normal("head.weight", (10, 64), 0.0, 1.0 / math.sqrt(64))
    bias = b.normal("head.bias", (10,), 0.0, 0.05)
    out = b._node("Gemm", [x, w, bias], "head", (1, 10), output="logits", transB=1)
    return b.finish(out, "ConvNeXt-style classifier (LayerNorm, GELU, NHWC permutes), 64x64")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "yolo_tiny": yolo_tiny,
    "shufflenet_tiny": shufflenet_tiny,
    "convnext_tiny_ln": convnext_tiny_ln,
}


def build(name: str) -> onnx.ModelProto:
    """Build model ``name`` (a key of :data:`MODELS`); the result is identical on every call."""
    return pick(MODELS, name)


def main(argv: Sequence[str] | None = None) -> int:
    names, out_dir = parse_model_args(__doc__, MODELS, argv)
    for name in names:
        model = build(name)
        onnx.checker.check_model(model, full_check=True)
        data = model.SerializeToString()
        (out_dir / f"{name}.onnx").write_bytes(data)
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        print(f"{name:<18} {len(model.graph.node):>4} nodes {len(data) / 1024:>8.1f} KB  {dict(sorted(ops.items()))}")
    print(f"written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
