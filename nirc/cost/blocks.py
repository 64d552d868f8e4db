"""Convolution types and building blocks as standalone ONNX models, for latency characterization.

Why synthetic blocks: the question a block-level search asks is "at this
feature-map size, which block is cheapest on this NPU?", and it can only be
answered per block, with equal input and output sizes so that blocks are
interchangeable. Each builder returns an opset-18 model with one NCHW input of
``1 x C x H x W`` and one output of the same shape, random weights from a
seeded generator (Vela's weight compression depends on the values, so the
seed is part of the block's identity) and no BatchNormalization (a BN folds
into the conv before deployment, so it would only add a rewrite to the cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


@dataclass(frozen=True)
class BlockSpec:
    """One block to characterize.

    Attributes:
        kind: a key of :data:`BLOCK_KINDS`.
        h, w, c: input (= output) feature-map height, width and channels.
        seed: seed of the random weights.
    """

    kind: str
    h: int
    w: int
    c: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; known: {', '.join(BLOCK_KINDS)}")
        if min(self.h, self.w, self.c) <= 0:
            raise ValueError(f"block {self.kind}: H, W, C must be positive, got {self.h}x{self.w}x{self.c}")
        minimum = BLOCK_KINDS[self.kind].min_channels
        if self.c % minimum:
            raise ValueError(f"block {self.kind}: C must be a multiple of {minimum}, got {self.c}")

    @property
    def label(self) -> str:
        return f"{self.kind}_{self.h}x{self.w}x{self.c}"


class _Builder:
    """Accumulates nodes and seeded initializers; names are short and unique."""

    def __init__(self, c: int, h: int, w: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shape = (1, c, h, w)
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, *, group: int = 1, act: str | None = "relu") -> str:
        """Conv (He-initialised weights, small bias) with 'same' padding and an optional activation."""
        fan_in = cin // group * k * k
        scale = np.float32(np.sqrt(2.0 / fan_in))
        weight = (self.rng.standard_normal((cout, cin // group, k, k)) * scale).astype(np.float32)
        bias = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        w_name, b_name = self._name("w"), self._name("b")
        self.inits += [numpy_helper.from_array(weight, w_name), numpy_helper.from_array(bias, b_name)]
        pad = k // 2
        y = self.node("Conv", [x, w_name, b_name], kernel_shape=[k, k], pads=[pad] * 4, group=group)
        return self.act(y, act)

    def act(self, x: str, act: str | None) -> str:
        if act is None:
            return x
        if act == "relu":
            return self.node("Relu", [x])
        if act == "relu6":
            lo, hi = self._name("lo"), self._name("hi")
            self.inits += [numpy_helper.from_array(np.array(0.0, np.float32), lo)]
            self.inits += [numpy_helper.from_array(np.array(6.0, np.float32), hi)]
            return self.node("Clip", [x, lo, hi])
        raise ValueError(f"unknown activation {act!r}")

    def model(self, out: str, name: str) -> onnx.ModelProto:
        value = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(self.shape))
        result = helper.make_tensor_value_info(out, TensorProto.FLOAT, list(self.shape))
        graph = helper.make_graph(self.nodes, name, [value], [result], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nirc.cost")
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model


def _conv3x3(b: _Builder, c: int) -> str:
    return b.conv("input", c, c, 3)


def _dw3x3(b: _Builder, c: int) -> str:
    return b.conv("input", c, c, 3, group=c)


def _pw1x1(b: _Builder, c: int) -> str:
    return b.conv("input", c, c, 1)


def _gconv3x3(b: _Builder, c: int) -> str:
    return b.conv("input", c, c, 3, group=4)


def _mbconv(b: _Builder, c: int) -> str:
    """MobileNetV2 inverted bottleneck: 1x1 expand x6, depthwise 3x3, 1x1 linear project, residual."""
    e = 6 * c
    x = b.conv("input", c, e, 1, act="relu6")
    x = b.conv(x, e, e, 3, group=e, act="relu6")
    x = b.conv(x, e, c, 1, act=None)
    return b.node("Add", ["input", x])


def _fused(expand: int) -> Callable[[_Builder, int], str]:
    def build(b: _Builder, c: int) -> str:
        """EfficientNetV2 Fused-MBConv: 3x3 expand, 1x1 linear project, residual."""
        x = b.conv("input", c, expand * c, 3, act="relu6")
        x = b.conv(x, expand * c, c, 1, act=None)
        return b.node("Add", ["input", x])

    return build


def _ghost(b: _Builder, c: int) -> str:
    """GhostNet module (ratio 2): a 1x1 conv makes C/2 maps, a cheap depthwise 3x3 makes C/2 more, concatenated."""
    half = c // 2
    primary = b.conv("input", c, half, 1)
    cheap = b.conv(primary, half, half, 3, group=half)
    return b.node("Concat", [primary, cheap], axis=1)


def _bsconv(b: _Builder, c: int) -> str:
    """Blueprint-separable conv (BSConv-U): pointwise first, then depthwise."""
    x = b.conv("input", c, c, 1, act=None)
    return b.conv(x, c, c, 3, group=c)


def _pool_residual(b: _Builder, c: int) -> str:
    """Parameter-free token mixer: 3x3 stride-1 average pool (PoolFormer-style) plus the identity."""
    pooled = b.node("AveragePool", ["input"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    return b.node("Add", ["input", pooled])


@dataclass(frozen=True)
class BlockKind:
    """A block family: its builder, a description for reports, and its channel granule."""

    build: Callable[[_Builder, int], str]
    description: str
    min_channels: int = 1


BLOCK_KINDS: dict[str, BlockKind] = {
    "conv3x3": BlockKind(_conv3x3, "standard 3x3 conv + ReLU"),
    "dwconv3x3": BlockKind(_dw3x3, "depthwise 3x3 conv + ReLU"),
    "pwconv1x1": BlockKind(_pw1x1, "pointwise 1x1 conv + ReLU"),
    "gconv3x3_g4": BlockKind(_gconv3x3, "grouped 3x3 conv, 4 groups + ReLU", min_channels=4),
    "mbconv_e6": BlockKind(_mbconv, "depthwise inverted bottleneck (MobileNetV2, expand 6, residual)"),
    "fused_mbconv_e4": BlockKind(_fused(4), "fused inverted bottleneck (3x3 expand 4, 1x1 project, residual)"),
    "fused_mbconv_e6": BlockKind(_fused(6), "fused inverted bottleneck (3x3 expand 6, 1x1 project, residual)"),
    "ghost": BlockKind(_ghost, "Ghost module (1x1 to C/2, depthwise 3x3, concat)", min_channels=2),
    "bsconv": BlockKind(_bsconv, "blueprint-separable conv (1x1 then depthwise 3x3 + ReLU)"),
    "pool_residual": BlockKind(_pool_residual, "parameter-free: 3x3 average pool + residual add"),
}
"""Every block family ``profile-blocks`` sweeps, in report order."""


def build_block(spec: BlockSpec) -> onnx.ModelProto:
    """The ONNX model of ``spec`` (deterministic for a given spec, seed included)."""
    builder = _Builder(spec.c, spec.h, spec.w, spec.seed)
    out = BLOCK_KINDS[spec.kind].build(builder, spec.c)
    return builder.model(out, spec.label)
