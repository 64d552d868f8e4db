"""Split convolutions with strides above 3 into a stride-<=3 Conv and a strided Slice."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, const_value, detach, has_any_op, input_at, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

#: Vela's largest native convolution stride ("Kernel stride must be in the range (1,3)").
MAX_STRIDE = 3


@dataclass(frozen=True)
class DecomposeStridedConvPass(Pass):
    """Rewrite a Conv with stride ``s > 3`` as a Conv with stride ``a <= 3`` followed by ``Slice(step = s / a)``.

    Why: Vela places DEPTHWISE_CONV_2D only with strides 1..3, and a CONV_2D with stride
    above 3 either fails to compile (Vela 5.2: "Non-passthrough operation (Conv2D) could
    not run on NPU" for a 5x5 stride-4 conv) or is split by Vela into one stride-1 conv
    per kernel offset (a 4x4 stride-4 stem: 256 sub-convs, ~360k cycles on U65-256).

    Identity, per spatial axis: with the same padding, a stride-``a`` conv computes the
    outputs at input offsets ``a * j``; taking every ``b``-th of them (``b = s / a``)
    leaves the offsets ``a * b * i = s * i``, exactly the stride-``s`` outputs, each the
    same dot product. ``a`` is the largest divisor of ``s`` not above 3, so the extra
    work is ``b`` times per axis instead of ``s``. The Slice runs on the NPU as a
    STRIDED_SLICE over H and W.
    """

    name = "decompose-strided-conv"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Conv"]):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op == "Conv" and _decompose(graph, node, namer):
                ctx.count("decomposed")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _native_stride(stride: int) -> int:
    """The largest divisor of ``stride`` Vela runs natively."""
    return next(a for a in range(min(stride, MAX_STRIDE), 0, -1) if stride % a == 0)


def _explicit_pads(auto_pad: str, node: gs.Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   kernel: list[int], dilations: list[int]) -> list[int]:  # fmt: skip
    """``[top, left, bottom, right]`` as ONNX applies them; SAME_* resolved for the original stride."""
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    strides = [int(s) for s in node.attrs.get("strides", [1, 1])]
    begin, end = [], []
    for i in range(2):
        total = max((out_shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_shape[2 + i], 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return [*begin, *end]


def _decompose(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    strides = [int(s) for s in node.attrs.get("strides", [1, 1])]
    x, out = node.inputs[0], node.outputs[0]
    in_shape, out_shape = static_shape(x), static_shape(out)
    if len(strides) != 2 or max(strides) <= MAX_STRIDE or in_shape is None or out_shape is None:
        return False
    weight = const_value(input_at(node, 1))
    if len(in_shape) != 4 or x.dtype is None or weight is None or weight.ndim != 4:
        return False
    kernel = [int(k) for k in node.attrs.get("kernel_shape", weight.shape[2:])]
    dilations = [int(d) for d in node.attrs.get("dilations", [1, 1])]
    pads = _explicit_pads(str(node.attrs.get("auto_pad", "NOTSET")), node, in_shape, out_shape, kernel, dilations)
    native = [_native_stride(s) for s in strides]
    steps = [s // a for s, a in zip(strides, native, strict=True)]
    mid = []
    for i in range(2):
        span = in_shape[2 + i] + pads[i] + pads[i + 2] - (kernel[i] - 1) * dilations[i] - 1
        mid.append(span // native[i] + 1)
    e = Emit(graph, namer, node.name, x.dtype)
    attrs = dict(node.attrs)
    attrs["strides"] = native
    attrs["pads"] = pads
    attrs.pop("auto_pad", None)
    inputs = list(node.inputs)
    detach(node)
    dense = e.node("Conv", "dense", inputs, (out_shape[0], out_shape[1], mid[0], mid[1]), attrs)
    ends = [step * (n - 1) + 1 for step, n in zip(steps, out_shape[2:], strict=True)]
    e.node("Slice", "subsample", [dense, e.ints("starts", [0, 0]), e.ints("ends", ends), e.ints("axes", [2, 3]),
                                  e.ints("steps", steps)], out_shape, output=out)  # fmt: skip
    return True
