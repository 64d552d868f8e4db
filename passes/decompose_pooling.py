"""Decompose max/average pools with kernels beyond Vela's limits into chains of smaller pools."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, detach, has_any_op, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

#: Vela's pooling limits: "kernel height must be less than or equal to 256" and the kernel
#: product at most 256*256, which kernels of at most 256 per axis always meet.
MAX_KERNEL = 256
_OPS = ("MaxPool", "AveragePool", "GlobalMaxPool")


@dataclass(frozen=True)
class DecomposePoolingPass(Pass):
    """Split MaxPool/AveragePool/GlobalMaxPool kernels larger than 256 into chains of pools.

    Vela places MAX_POOL_2D and VALID AVERAGE_POOL_2D on the NPU only with a kernel
    height of at most 256 and a kernel area of at most 65536. Rewrites:

    * non-overlapping windows (stride = kernel, or a global pool), no padding: a
      kernel ``k = a * b`` per axis becomes a pool ``(a, stride a)`` followed by a
      pool ``(b, stride b)``. Max of maxes is the max; for averages every inner window
      has the same count, so the average of averages is the average (exact up to
      float rounding). ``floor(floor(L / a) / b) = floor(L / (a * b))``, so the
      output size is the same.
    * MaxPool otherwise (overlapping windows, padding, or a kernel with a prime
      factor above 256): ``max(x[i*s : i*s + k]) = max over j in [i*s, i*s + k2) of
      max(x[j : j + k1])`` with ``k1 + k2 - 1 = k``, i.e. a stride-1 pool with kernel
      ``k1`` (carrying the original padding) followed by a pool with kernel ``k2``
      and the original stride. Exact.

    Average pools with overlapping windows or padding are kept: splitting them would
    change the per-window counts.
    """

    name = "decompose-pooling"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, _OPS):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op in _OPS and _decompose(graph, node, namer):
                ctx.count(node.op)
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _factor(k: int) -> list[int] | None:
    """Factors of ``k``, each at most MAX_KERNEL, fewest first; None if a prime factor is too large."""
    if k <= MAX_KERNEL:
        return [k]
    for a in range(MAX_KERNEL, 1, -1):
        if k % a == 0:
            rest = _factor(k // a)
            if rest is not None:
                return [a, *rest]
    return None


@dataclass(frozen=True)
class _Pool:
    op: str
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    count_include_pad: int


def _read(node: gs.Node, shape: tuple[int, ...]) -> _Pool | None:
    if node.op == "GlobalMaxPool":
        return _Pool("MaxPool", (shape[2], shape[3]), (1, 1), (0, 0, 0, 0), 0)
    attrs = node.attrs
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or int(attrs.get("ceil_mode", 0)):
        return None
    if any(int(d) != 1 for d in attrs.get("dilations", [1, 1])) or int(attrs.get("storage_order", 0)):
        return None
    kernel = [int(k) for k in attrs.get("kernel_shape", [])]
    if len(kernel) != 2:
        return None
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])] if attrs.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 4
    return _Pool(node.op, (kernel[0], kernel[1]), (strides[0], strides[1]), (pads[0], pads[1], pads[2], pads[3]),
                 int(attrs.get("count_include_pad", 0)))  # fmt: skip


def _decompose(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    x = node.inputs[0] if node.inputs else None
    shape = static_shape(x) if x is not None else None
    if x is None or shape is None or len(shape) != 4 or x.dtype is None:
        return False
    if len([o for o in node.outputs if o.name]) != 1 or any(t.outputs for t in node.outputs[1:]):
        return False
    pool = _read(node, shape)
    if pool is None or max(pool.kernel) <= MAX_KERNEL:
        return False
    out = node.outputs[0]
    in_hw = (shape[2], shape[3])
    unpadded = not any(pool.pads)
    tiles = all(s == k or n == k for s, k, n in zip(pool.strides, pool.kernel, in_hw, strict=True))
    factors = [_factor(k) for k in pool.kernel]
    steps: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]] = []
    if unpadded and tiles and factors[0] is not None and factors[1] is not None:
        fh, fw = factors[0], factors[1]
        depth = max(len(fh), len(fw))
        fh, fw = fh + [1] * (depth - len(fh)), fw + [1] * (depth - len(fw))
        steps = [((a, b), (a, b), (0, 0, 0, 0)) for a, b in zip(fh, fw, strict=True)]
    elif pool.op == "MaxPool":
        steps = _overlapping(pool)
    else:
        return False
    e = Emit(graph, namer, node.name, x.dtype)
    detach(node)
    h, w = in_hw
    current = x
    for i, (kernel, strides, pads) in enumerate(steps):
        h = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        w = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        attrs: dict[str, int | list[int]] = {"kernel_shape": list(kernel), "strides": list(strides),
                                             "pads": list(pads)}  # fmt: skip
        if pool.op == "AveragePool":
            attrs["count_include_pad"] = pool.count_include_pad
        last = i == len(steps) - 1
        current = e.node(pool.op, f"stage{i}", [current], (shape[0], shape[1], h, w), attrs, out if last else None)
    return True


def _split(k: int) -> list[int]:
    """Stride-1 kernels ``k1, k2, ...`` (each <= MAX_KERNEL) with ``sum(k_i - 1) + 1 = k``."""
    pieces = []
    while k > MAX_KERNEL:
        pieces.append(MAX_KERNEL)
        k -= MAX_KERNEL - 1
    return [*pieces, k]


def _overlapping(pool: _Pool) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]]:
    """Stride-1 max pools (the first carries the padding) then the original stride on the last."""
    kh, kw = _split(pool.kernel[0]), _split(pool.kernel[1])
    depth = max(len(kh), len(kw))
    # Shorter axis padded with kernel-1 stages at the end: the first stage then has each
    # axis's largest kernel, so the padding it carries stays smaller than its kernel.
    kh, kw = kh + [1] * (depth - len(kh)), kw + [1] * (depth - len(kw))
    steps: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]] = []
    for i, (a, b) in enumerate(zip(kh, kw, strict=True)):
        strides = pool.strides if i == depth - 1 else (1, 1)
        pads = pool.pads if i == 0 else (0, 0, 0, 0)
        steps.append(((a, b), strides, pads))
    return steps
