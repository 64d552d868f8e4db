"""Exact conv algebra shared by the block-substitution rules (no rule lives here).

Every linear, translation-equivariant map the rules reason about -- a Conv
with constant weights, a BatchNormalization, a per-channel ``x * s + t``, an
AveragePool that counts its padding, the identity -- is held as one
:class:`LinearConv`: ``y = conv2d(x, W, strides, pads) + b`` with a *dense*
weight ``W[Cout, Cin, kh, kw]`` (grouped weights are expanded to their
block-diagonal form) and dilation 1. On that form the three identities the
exact rules rest on are plain array arithmetic:

* **embedding** (:func:`embed`): a ``k x k`` kernel whose window is centred
  like a larger ``K x K`` one (same stride, ``K``'s top padding minus ``k``'s is
  the offset) is the ``K x K`` kernel that is zero outside those taps. Both read
  the same input positions, and positions outside the input are zero padding
  in both, so the outputs agree element by element.
* **sum** (:func:`add`): ``conv(x, W1) + b1 + conv(x, W2) + b2 = conv(x, W1 + W2) + (b1 + b2)``
  once both are embedded in a common window (linearity of convolution).
* **composition** (:func:`compose`): ``B(A(x))`` for ``A`` then ``B`` is one conv
  with kernel ``W[o, i, sa*rb + ra] = sum_m Wb[o, m, rb] * Wa[m, i, ra]``, stride
  ``sa * sb`` and bias ``bb + sum_{m, rb} Wb[o, m, rb] * ba[m]`` -- exact when ``B``
  has no padding (every window of ``B`` reads real outputs of ``A``), or when
  ``A`` is a bias-free 1x1 stride-1 unpadded map (then ``A`` of a zero border is
  zero, so ``B``'s zero padding of ``A(x)`` is ``A`` of ``x``'s zero padding). With
  padding in ``B`` and a bias in ``A`` the merged conv would see ``A``'s bias in
  the border where ``B`` saw zeros: not exact, refused.

Arithmetic is float64; weights are rounded to float32 once, when written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import const_value, input_at, per_channel, split_const, static_shape

Pads = tuple[int, int, int, int]
"""ONNX order: top, left, bottom, right."""


@dataclass(frozen=True)
class LinearConv:
    """``y = conv2d(x, weight, strides, pads) + bias`` with a dense float64 weight and dilation 1.

    Attributes:
        weight: ``[Cout, Cin, kh, kw]``, block-diagonal when it came from a grouped conv.
        bias: ``[Cout]``.
        strides: ``(sh, sw)``.
        pads: ``(top, left, bottom, right)`` zero padding.
    """

    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, int] = (1, 1)
    pads: Pads = (0, 0, 0, 0)

    @property
    def cout(self) -> int:
        return int(self.weight.shape[0])

    @property
    def cin(self) -> int:
        return int(self.weight.shape[1])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def padded(self) -> bool:
        return any(p != 0 for p in self.pads)

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded map: it acts on each pixel alone."""
        return self.kernel == (1, 1) and self.strides == (1, 1) and not self.padded

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.strides, self.pads
        return (hw[0] + pt + pb - kh) // sh + 1, (hw[1] + pl + pr - kw) // sw + 1


def identity_conv(channels: int) -> LinearConv:
    """The identity as a 1x1 conv."""
    return LinearConv(np.eye(channels).reshape(channels, channels, 1, 1), np.zeros(channels))


def channel_affine(scale: np.ndarray, shift: np.ndarray) -> LinearConv:
    """``x * scale[c] + shift[c]`` as a diagonal 1x1 conv."""
    s = np.asarray(scale, np.float64).reshape(-1)
    return LinearConv(np.diag(s).reshape(s.size, s.size, 1, 1), np.asarray(shift, np.float64).reshape(-1).copy())


def densify(weight: np.ndarray, group: int) -> np.ndarray:
    """The block-diagonal dense ``[Cout, Cin, kh, kw]`` weight of a grouped conv weight ``[Cout, Cin/g, kh, kw]``."""
    w = np.asarray(weight, np.float64)
    if group == 1:
        return w.copy()
    cout, cin_g = w.shape[:2]
    og = cout // group
    dense = np.zeros((cout, cin_g * group, *w.shape[2:]))
    for g in range(group):
        dense[g * og : (g + 1) * og, g * cin_g : (g + 1) * cin_g] = w[g * og : (g + 1) * og]
    return dense


def block_diagonal(weight: np.ndarray, group: int) -> np.ndarray | None:
    """The grouped weight ``[Cout, Cin/g, kh, kw]`` when dense ``weight`` is block-diagonal in ``group`` blocks."""
    cout, cin = weight.shape[:2]
    if group < 1 or cout % group or cin % group:
        return None
    og, ig = cout // group, cin // group
    blocks = weight.reshape(group, og, group, ig, *weight.shape[2:]).swapaxes(1, 2)  # [g_out, g_in, og, ig, ...]
    if np.any(blocks[~np.eye(group, dtype=bool)] != 0):
        return None
    return np.stack([blocks[g, g] for g in range(group)]).reshape(cout, ig, *weight.shape[2:])


def regroup(weight: np.ndarray, groups: Iterable[int]) -> tuple[np.ndarray, int]:
    """The coarsest-looking fit: the largest of ``groups`` in which ``weight`` is block-diagonal (else dense)."""
    for g in sorted(set(groups), reverse=True):
        if g > 1 and (grouped := block_diagonal(weight, g)) is not None:
            return grouped, g
    return weight, 1


def conv_attrs(node: gs.Node) -> tuple[tuple[int, int], Pads, tuple[int, int], int] | str:
    """``(strides, pads, dilations, group)`` of a 2-D Conv, or why it is outside what the rules handle."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return f"auto_pad={auto_pad}"
    strides = tuple(int(s) for s in node.attrs.get("strides", [1, 1]))
    dilations = tuple(int(d) for d in node.attrs.get("dilations", [1, 1]))
    pads = tuple(int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else (0, 0, 0, 0)
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        return "not a 2-D conv"
    return (
        (strides[0], strides[1]),
        (pads[0], pads[1], pads[2], pads[3]),
        (dilations[0], dilations[1]),
        int(node.attrs.get("group", 1)),
    )


def conv_of(node: gs.Node) -> LinearConv | str:
    """A Conv node as a :class:`LinearConv`, or the reason it cannot be one."""
    if node.op != "Conv":
        return f"{node.op} is not a Conv"
    weight = const_value(input_at(node, 1))
    if weight is None or weight.dtype.kind != "f" or weight.ndim != 4:
        return "weight is not a constant float 2-D kernel"
    bias_t = input_at(node, 2)
    bias = const_value(bias_t) if bias_t is not None else np.zeros(weight.shape[0])
    if bias is None:
        return "bias is not a constant"
    attrs = conv_attrs(node)
    if isinstance(attrs, str):
        return attrs
    strides, pads, dilations, group = attrs
    if dilations != (1, 1):
        return f"dilation {dilations}"
    return LinearConv(densify(weight, group), np.asarray(bias, np.float64).reshape(-1).copy(), strides, pads)


def batchnorm_affine(node: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, shift)`` of an inference BatchNormalization with constant statistics."""
    if node.op != "BatchNormalization" or len(node.outputs) != 1 or node.attrs.get("training_mode", 0):
        return None
    values = [const_value(input_at(node, i)) for i in range(1, 5)]
    arrays = [np.asarray(v, np.float64).reshape(-1) for v in values if v is not None]
    if len(arrays) != 4:
        return None
    gamma, beta, mean, var = arrays
    scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    return scale, beta - mean * scale


def elementwise_affine(node: gs.Node) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """``(x, scale, shift)`` for ``x * c``, ``x / c``, ``x + c``, ``x - c`` with a per-channel float constant ``c``."""
    if node.op not in ("Mul", "Div", "Add", "Sub"):
        return None
    split = split_const(node)
    if split is None:
        return None
    x, c = split
    if c.dtype.kind != "f" or not np.all(np.isfinite(c)):
        return None
    if node.op in ("Sub", "Div") and node.inputs[0] is not x:
        return None
    shape = static_shape(x)
    if shape is None or len(shape) != 4 or static_shape(node.outputs[0]) != shape:
        return None
    v = per_channel(c, shape, axis=1)
    if v is None:
        return None
    v = v.astype(np.float64)
    if node.op == "Div" and np.any(v == 0):
        return None
    if node.op == "Mul":
        return x, v, np.zeros_like(v)
    if node.op == "Div":
        return x, 1.0 / v, np.zeros_like(v)
    return x, np.ones_like(v), v if node.op == "Add" else -v


def avgpool_conv(node: gs.Node, channels: int) -> LinearConv | str:
    """An AveragePool as a per-channel conv with weights ``1 / (kh * kw)``.

    Exact when every window divides by the full kernel size: no padding, or
    ``count_include_pad = 1`` (padded zeros are counted, as a conv counts them).
    """
    if node.op != "AveragePool":
        return f"{node.op} is not an AveragePool"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or node.attrs.get("ceil_mode", 0):
        return "auto_pad or ceil_mode"
    kernel = [int(k) for k in node.attrs.get("kernel_shape", [])]
    if len(kernel) != 2 or any(int(d) != 1 for d in node.attrs.get("dilations", [1, 1])):
        return "not a 2-D undilated pool"
    pads = tuple(int(p) for p in node.attrs.get("pads", [0, 0, 0, 0]))
    if any(pads) and not node.attrs.get("count_include_pad", 0):
        return "padded AveragePool that excludes the padding from its divisor"
    strides = tuple(int(s) for s in node.attrs.get("strides", [1, 1]))
    weight = np.zeros((channels, channels, kernel[0], kernel[1]))
    weight[np.arange(channels), np.arange(channels)] = 1.0 / (kernel[0] * kernel[1])
    return LinearConv(weight, np.zeros(channels), (strides[0], strides[1]), (pads[0], pads[1], pads[2], pads[3]))


def compose(first: LinearConv, second: LinearConv) -> LinearConv | str:
    """``second(first(x))`` as one conv, or why that would not be exact (see the module docstring)."""
    if first.cout != second.cin:
        return "channel counts do not chain"
    if second.padded:
        if not first.pointwise:
            return "the second conv is padded and the first is not a 1x1 stride-1 unpadded map"
        if np.any(first.bias != 0):
            return "the first conv's bias would appear in the second conv's zero-padded border"
        weight = np.einsum("omhw,mi->oihw", second.weight, first.weight[:, :, 0, 0])
        return LinearConv(weight, second.bias.copy(), second.strides, second.pads)
    (sah, saw), (kah, kaw) = first.strides, first.kernel
    kbh, kbw = second.kernel
    weight = np.zeros((second.cout, first.cin, sah * (kbh - 1) + kah, saw * (kbw - 1) + kaw))
    for rh in range(kbh):
        for rw in range(kbw):
            tap = np.einsum("om,mihw->oihw", second.weight[:, :, rh, rw], first.weight)
            weight[:, :, sah * rh : sah * rh + kah, saw * rw : saw * rw + kaw] += tap
    bias = second.bias + np.einsum("omhw,m->o", second.weight, first.bias)
    strides = (sah * second.strides[0], saw * second.strides[1])
    return LinearConv(weight, bias, strides, first.pads)


def window(conv: LinearConv) -> tuple[int, int, int, int]:
    """How far each window reaches around ``stride * i``: ``(up, left, down, right)`` taps."""
    (kh, kw), (pt, pl, _, _) = conv.kernel, conv.pads
    return pt, pl, kh - 1 - pt, kw - 1 - pl


def embed(conv: LinearConv, reach: tuple[int, int, int, int], hw: Sequence[int]) -> LinearConv | str:
    """``conv`` as a larger kernel reaching ``reach`` = ``(up, left, down, right)`` taps around each window origin.

    The result reads the same input positions with the same weights (zeros
    elsewhere), so it is the same map; its bottom/right padding is the least
    that keeps the output size, checked against ``conv``'s on input size ``hw``.
    """
    up, left, down, right = window(conv)
    if up > reach[0] or left > reach[1] or down > reach[2] or right > reach[3]:
        return "window does not fit"
    kh, kw = reach[0] + reach[2] + 1, reach[1] + reach[3] + 1
    weight = np.zeros((conv.cout, conv.cin, kh, kw))
    oh, ow = reach[0] - up, reach[1] - left
    weight[:, :, oh : oh + conv.kernel[0], ow : ow + conv.kernel[1]] = conv.weight
    ho, wo = conv.out_size(hw)
    sh, sw = conv.strides
    pb = max(0, sh * (ho - 1) + kh - reach[0] - hw[0])
    pr = max(0, sw * (wo - 1) + kw - reach[1] - hw[1])
    out = LinearConv(weight, conv.bias.copy(), conv.strides, (reach[0], reach[1], pb, pr))
    if out.out_size(hw) != (ho, wo):
        return "embedding changes the output size"
    return out


def add(convs: Sequence[LinearConv], hw: Sequence[int]) -> LinearConv | str:
    """The sum of parallel convs reading the same ``hw`` input, as one conv (or why not)."""
    if len({c.strides for c in convs}) != 1:
        return "branches have different strides"
    if len({(c.cin, c.cout) for c in convs}) != 1:
        return "branches have different channel counts"
    if len({c.out_size(hw) for c in convs}) != 1:
        return "branches have different output sizes"
    reaches = [window(c) for c in convs]
    reach = (
        max(r[0] for r in reaches),
        max(r[1] for r in reaches),
        max(r[2] for r in reaches),
        max(r[3] for r in reaches),
    )
    if min(min(r) for r in reaches) < 0:
        return "a branch's padding exceeds its kernel"
    embedded = [embed(c, reach, hw) for c in convs]
    failed = next((e for e in embedded if isinstance(e, str)), None)
    if failed is not None:
        return failed
    parts = [e for e in embedded if isinstance(e, LinearConv)]
    pads = {p.pads for p in parts}
    if len(pads) != 1:
        return "branches need different bottom/right padding"
    return LinearConv(
        np.sum([p.weight for p in parts], axis=0),
        np.sum([p.bias for p in parts], axis=0),
        parts[0].strides,
        parts[0].pads,
    )


def conv_node_attrs(conv: LinearConv, group: int) -> dict[str, object]:
    """ONNX Conv attributes for ``conv`` written with ``group`` groups."""
    return {
        "kernel_shape": list(conv.kernel),
        "strides": list(conv.strides),
        "pads": list(conv.pads),
        "dilations": [1, 1],
        "group": group,
    }


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _s2d_axis(k: int, s: int, p: int, b: int) -> tuple[int, int, int] | None:
    """Per axis: (new kernel, new top pad, new stride) of a stride-``s`` conv read through space-to-depth ``b``."""
    if s % b:
        return None
    d_min, d_max = math.floor(-p / b), math.floor((k - 1 - p) / b)
    return d_max - d_min + 1, -d_min, s // b


def space_to_depth_conv(conv: LinearConv, block: tuple[int, int], hw: Sequence[int]) -> LinearConv | str:
    """``conv`` applied to ``z = SpaceToDepth(x)`` instead of ``x`` (ONNX channel order ``(dy * bw + dx) * C + c``).

    Identity (per axis, stride ``s = b * s'``): the original reads
    ``x[s*i + r - p]``; writing ``r - p = b*d + a`` with ``0 <= a < b``, that is
    ``z[s'*i + d, channel a]``, so the new conv has stride ``s'``, taps
    ``d`` from ``floor(-p / b)`` to ``floor((k - 1 - p) / b)``, top padding
    ``-floor(-p / b)`` and weight ``W'[o, (a, c), d] = W[o, c, b*d + a + p]``
    (zero where that index is outside the kernel). Exact when ``b`` divides the
    input size: a padded row of ``z`` then holds only padded rows of ``x``.
    """
    bh, bw = block
    if hw[0] % bh or hw[1] % bw:
        return f"input {hw[0]}x{hw[1]} is not divisible by the block {bh}x{bw}"
    (kh, kw), (sh, sw), (pt, pl, _, _) = conv.kernel, conv.strides, conv.pads
    ah, aw = _s2d_axis(kh, sh, pt, bh), _s2d_axis(kw, sw, pl, bw)
    if ah is None or aw is None:
        return f"stride {sh}x{sw} is not divisible by the block {bh}x{bw}"
    (nkh, npt, nsh), (nkw, npl, nsw) = ah, aw
    c = conv.cin
    weight = np.zeros((conv.cout, bh * bw * c, nkh, nkw))
    for rh in range(kh):
        dh, a_h = divmod(rh - pt, bh)
        for rw in range(kw):
            dw, a_w = divmod(rw - pl, bw)
            base = (a_h * bw + a_w) * c
            weight[:, base : base + c, dh + npt, dw + npl] = conv.weight[:, :, rh, rw]
    zh, zw = hw[0] // bh, hw[1] // bw
    ho, wo = conv.out_size(hw)
    npb = max(0, nsh * (ho - 1) + nkh - npt - zh)
    npr = max(0, nsw * (wo - 1) + nkw - npl - zw)
    out = LinearConv(weight, conv.bias.copy(), (nsh, nsw), (npt, npl, npb, npr))
    if out.out_size((zh, zw)) != (ho, wo):
        return "space-to-depth changes the output size"
    return out


def space_to_depth_weight(channels: int, block: tuple[int, int]) -> np.ndarray:
    """Weight of the ``block``-sized, ``block``-strided conv that computes ONNX SpaceToDepth (identity taps)."""
    bh, bw = block
    weight = np.zeros((bh * bw * channels, channels, bh, bw))
    for a_h in range(bh):
        for a_w in range(bw):
            base = (a_h * bw + a_w) * channels
            weight[base + np.arange(channels), np.arange(channels), a_h, a_w] = 1.0
    return weight
