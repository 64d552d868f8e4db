"""Convs outside the NPU's stride and kernel limits, decomposed exactly into ones inside them.

Pattern::

    y = Conv<strides = [sh, sw], kernel_shape = [kh, kw]>(x, W, b)
        # sh > 3 or sw > 3 (with more than one output row/column), or kh > 64, or kh * kw > 4096

Limits from Vela 5.2 (``tflite_supported_operators.py``): conv stride 1..3
when the OFM has more than one row (wider strides only through Vela's own
VALID-padding trick), dilated kernel height <= 64 and kernel area <= 4096.
A conv outside them falls back to the CPU or makes Vela fail, so the oracle
treats "does not compile" and "has CPU ops" as worse than any NPU cycle count.

Candidates, each exact:

* ``space-to-depth`` (``group = 1``, stride ``s = b * s'`` with ``b, s' <= 3``):
  an identity ``b x b`` stride-``b`` conv computes ``z = SpaceToDepth(x, b)``
  (one weight of 1 per output channel, exact also in int8), then the
  stride-``s'`` conv of :func:`~nirc.passes.block_rules.kernels.space_to_depth_conv`
  reads the same pixels with the same weights. Same MACs as the original.
* ``subsample``: the conv with stride ``s / b`` followed by a 1x1 MaxPool with
  stride ``b``. Identity: ``conv_s(x)[i] = conv_{s/b}(x)[b * i]`` (the windows
  start at ``s * i = (s/b) * (b * i)``), and a 1x1 max pool just picks
  positions; output sizes agree because ``floor(floor(T / (s/b)) / b) = floor(T / s)``.
  ``b^2`` times the MACs, any group count.
* ``split-kernel`` (kernel too large): ``x`` is zero-padded once (top/bottom),
  the kernel is cut into row bands of at most 64 rows (and 4096 taps), band
  ``[r0, r1)`` is a conv over the rows ``r0 ..`` of the padded input, and the
  band outputs are added: ``sum_r W[r] x[s*i + r] = sum_bands sum_{r in band} W[r] x[s*i + r]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, const_value, input_at, static_shape
from .base import Build, Candidate, Match, Rule, RuleEnv, Writer, nchw, nodes_by_name, remove_block
from .kernels import (
    LinearConv,
    conv_attrs,
    conv_node_attrs,
    conv_of,
    space_to_depth_conv,
    space_to_depth_weight,
)

MAX_STRIDE = 3
MAX_KERNEL_HEIGHT = 64
MAX_KERNEL_AREA = 64 * 64


def _block(stride: int) -> int | None:
    """The smallest ``b <= 3`` with ``stride = b * s'`` and ``s' <= 3``."""
    for b in (1, 2, 3):
        if stride % b == 0 and stride // b <= MAX_STRIDE:
            return b
    return None


def outside_limits(node: gs.Node, out_hw: tuple[int, int]) -> str | None:
    """Which NPU limit the conv exceeds, or None."""
    attrs = conv_attrs(node)
    weight = const_value(input_at(node, 1))
    if isinstance(attrs, str) or weight is None or weight.ndim != 4:
        return None
    (sh, sw), _, _, _ = attrs
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if (sh > MAX_STRIDE and out_hw[0] > 1) or (sw > MAX_STRIDE and out_hw[1] > 1):
        return f"stride {sh}x{sw} > {MAX_STRIDE}"
    if kh > MAX_KERNEL_HEIGHT or kh * kw > MAX_KERNEL_AREA:
        return f"kernel {kh}x{kw} exceeds height {MAX_KERNEL_HEIGHT} / area {MAX_KERNEL_AREA}"
    return None


class LargeKernelRule(Rule):
    """A conv beyond the NPU's stride/kernel limits -> space-to-depth, subsampled or kernel-split convs."""

    name = "large-kernel"
    exact = True
    ops = ("Conv",)

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        for node in list(graph.nodes):
            if node.op != "Conv" or len(node.outputs) != 1:
                continue
            out = nchw(node.outputs[0])
            if out is None or outside_limits(node, (out[2], out[3])) is None:
                continue
            yield Match(self.name, (node.name,), (node.inputs[0].name,), node.outputs[0].name)

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        node = nodes_by_name(graph)[match.nodes[0]]
        conv = conv_of(node)
        if isinstance(conv, str):
            return conv
        if nchw(node.inputs[0]) is None:
            return "input is not a static 4-D feature map"
        return None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        node = nodes_by_name(graph)[match.nodes[0]]
        conv = conv_of(node)
        attrs = conv_attrs(node)
        x_shape, y_shape = nchw(node.inputs[0]), nchw(node.outputs[0])
        assert not isinstance(conv, str) and not isinstance(attrs, str) and x_shape and y_shape
        strides, _pads, _, group = attrs
        raw = np.asarray(const_value(input_at(node, 1)), np.float64)
        hw = x_shape[2:]
        out: list[Candidate] = []
        # An axis with a single output position has no stride limit: leave it alone.
        bh = 1 if y_shape[2] == 1 else _block(strides[0])
        bw = 1 if y_shape[3] == 1 else _block(strides[1])
        if bh is not None and bw is not None and (bh, bw) != (1, 1):
            if group == 1:
                s2d = space_to_depth_conv(conv, (bh, bw), hw)
                if not isinstance(s2d, str):
                    note = f"identity {bh}x{bw}/{bh}x{bw} space-to-depth conv, then {s2d.kernel} stride {s2d.strides}"
                    out.append(Candidate("space-to-depth", _s2d(match, conv.cin, (bh, bw), s2d), note=note))
            inner = (strides[0] // bh, strides[1] // bw)
            note = f"conv with stride {inner}, then a 1x1 MaxPool with stride {(bh, bw)}"
            out.append(Candidate("subsample", _subsample(match, node, inner, (bh, bw)), note=note))
        kh, kw = conv.kernel
        if kh > MAX_KERNEL_HEIGHT or kh * kw > MAX_KERNEL_AREA:
            band = min(MAX_KERNEL_HEIGHT, MAX_KERNEL_AREA // kw)
            if band >= 1:
                note = f"{-(-kh // band)} row bands of <= {band} rows, summed"
                out.append(Candidate("split-kernel", _split(match, node, raw, conv, band, x_shape, y_shape), note=note))
        return out


def _s2d(match: Match, channels: int, block: tuple[int, int], conv: LinearConv) -> Build:
    def build(g: gs.Graph, namer: Namer) -> list[str]:
        (x,), y = remove_block(g, match)
        shape = nchw(x)
        assert shape is not None
        w = Writer(g, namer, f"{match.nodes[0]}_s2d")
        bh, bw = block
        z_shape = (shape[0], channels * bh * bw, shape[2] // bh, shape[3] // bw)
        s2d_attrs = {
            "kernel_shape": [bh, bw],
            "strides": [bh, bw],
            "pads": [0, 0, 0, 0],
            "dilations": [1, 1],
            "group": 1,
        }
        z = w.conv("space_to_depth", x, space_to_depth_weight(channels, block), None, s2d_attrs, z_shape)
        w.conv("conv", z, conv.weight, conv.bias, conv_node_attrs(conv, 1), None, output=y)
        return w.created

    return build


def _subsample(match: Match, node: gs.Node, inner: tuple[int, int], block: tuple[int, int]) -> Build:
    weight = np.asarray(const_value(input_at(node, 1)))
    bias_value = const_value(input_at(node, 2))
    attrs = {**node.attrs, "strides": list(inner)}
    pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]

    def build(g: gs.Graph, namer: Namer) -> list[str]:
        (x,), y = remove_block(g, match)
        shape, y_shape = nchw(x), static_shape(y)
        assert shape is not None and y_shape is not None
        kh, kw = weight.shape[2:]
        h1 = (shape[2] + pads[0] + pads[2] - kh) // inner[0] + 1
        w1 = (shape[3] + pads[1] + pads[3] - kw) // inner[1] + 1
        w = Writer(g, namer, f"{match.nodes[0]}_sub")
        t = w.conv("conv", x, weight, bias_value, attrs, (shape[0], weight.shape[0], h1, w1))
        w.node("MaxPool", "pick", [t], None, {"kernel_shape": [1, 1], "strides": list(block)}, output=y)
        return w.created

    return build


def _split(
    match: Match,
    node: gs.Node,
    raw: np.ndarray,
    conv: LinearConv,
    band: int,
    x_shape: tuple[int, int, int, int],
    y_shape: tuple[int, int, int, int],
) -> Build:
    (pt, pl, pb, pr), (sh, _) = conv.pads, conv.strides
    kh = raw.shape[2]
    group = int(node.attrs.get("group", 1))

    def build(g: gs.Graph, namer: Namer) -> list[str]:
        (x,), y = remove_block(g, match)
        w = Writer(g, namer, f"{match.nodes[0]}_band")
        n, c, h, wd = x_shape
        padded: gs.Tensor = x
        if pt or pb:
            pads = w.const("pads", np.array([0, 0, pt, 0, 0, 0, pb, 0]), np.int64)
            padded = w.node("Pad", "pad", [x, pads], (n, c, h + pt + pb, wd))
        ho = y_shape[2]
        total: gs.Tensor | None = None
        for r0 in range(0, kh, band):
            r1 = min(kh, r0 + band)
            rows = sh * (ho - 1) + (r1 - r0)
            starts = w.const(f"s{r0}", np.array([r0]), np.int64)
            ends = w.const(f"e{r0}", np.array([r0 + rows]), np.int64)
            axes = w.const(f"a{r0}", np.array([2]), np.int64)
            sliced = w.node("Slice", f"rows{r0}", [padded, starts, ends, axes], (n, c, rows, wd))
            attrs = {
                "kernel_shape": [r1 - r0, raw.shape[3]],
                "strides": list(conv.strides),
                "pads": [0, pl, 0, pr],
                "dilations": [1, 1],
                "group": group,
            }
            bias = conv.bias if total is None else None
            last = r1 == kh
            part = w.conv(
                f"conv{r0}",
                sliced,
                raw[:, :, r0:r1],
                bias,
                attrs,
                y_shape,
                output=y if last and total is None else None,
            )
            if total is None:
                total = part
            else:
                total = w.node("Add", f"sum{r0}", [total, part], y_shape, output=y if last else None)
        return w.created

    return build
