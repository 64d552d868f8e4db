"""Layout bookkeeping: which permutation of the ONNX axes a TFLite tensor stores.

Every emitted tensor records ``perm``: the stored array is ``onnx_array.transpose(perm)``.
4-D activations are stored NHWC (``perm == (0, 2, 3, 1)``) because every Ethos-U
kernel Vela generates reads and writes NHWC feature maps; storing them NCHW would
force a TRANSPOSE around each conv, and Vela only runs a few transpose shapes on
the NPU.  All other ranks keep the ONNX order, so their attributes need no remap.

Weight tensors are re-laid out once here at emit time, which is free at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NCHW_TO_NHWC: tuple[int, int, int, int] = (0, 2, 3, 1)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def standard_perm(rank: int) -> tuple[int, ...]:
    """The storage permutation nirc uses for a non-constant tensor of ``rank``."""
    return NCHW_TO_NHWC if rank == 4 else identity(rank)


def invert(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def compose(first: Sequence[int], second: Sequence[int]) -> tuple[int, ...]:
    """Permutation equal to ``x.transpose(first).transpose(second)``."""
    return tuple(first[s] for s in second)


def permute_shape(shape: Sequence[int], perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(shape[p]) for p in perm)


def stored_axis(onnx_axis: int, perm: Sequence[int]) -> int:
    """Position in the stored layout of an ONNX axis (negative axes allowed)."""
    axis = onnx_axis + len(perm) if onnx_axis < 0 else onnx_axis
    return list(perm).index(axis)


def is_memory_noop(shape: Sequence[int], perm: Sequence[int]) -> bool:
    """Whether ``x.transpose(perm)`` keeps the flat element order of ``x`` (shape of x).

    True when the axes longer than 1 keep their relative order: then a RESHAPE, which
    Vela executes as a free re-interpretation of the buffer, replaces the TRANSPOSE.
    """
    order = [p for p in perm if shape[p] != 1]
    return order == sorted(order)


def nchw_flatten_order(c: int, h: int, w: int) -> np.ndarray:
    """ONNX flat index (C,H,W order) of each element of an NHWC-flattened row.

    ``nhwc.reshape(n, -1)[:, j] == nchw.reshape(n, -1)[:, order[j]]``; permuting the
    rows of a following FC weight by ``order`` makes the flatten exact without a
    TRANSPOSE in the graph.
    """
    return np.arange(c * h * w, dtype=np.int64).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def conv_weight_ohwi(weight: np.ndarray) -> np.ndarray:
    """ONNX Conv weight [O, I, kH, kW] -> TFLite CONV_2D weight [O, kH, kW, I]."""
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1))


def depthwise_weight_1hwc(weight: np.ndarray) -> np.ndarray:
    """ONNX depthwise weight [C*M, 1, kH, kW] -> TFLite [1, kH, kW, C*M].

    ONNX output channel ``c*M + m`` (group ``c``) is exactly TFLite's depthwise
    output channel ``c*M + m``, so only the axes move.
    """
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0))


def broadcast_const(array: np.ndarray, rank: int, perm: Sequence[int]) -> np.ndarray:
    """Lay out a constant operand of a broadcasting op like the other operand.

    The constant is first aligned to ``rank`` with numpy's rule (leading 1s), then
    permuted; leading 1-dims are finally dropped so per-channel vectors stay 1-D,
    which is the shape Vela's elementwise broadcast handles best.
    """
    arr = np.asarray(array)
    arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape).transpose(tuple(perm))
    while arr.ndim > 1 and arr.shape[0] == 1:
        arr = arr.reshape(arr.shape[1:])
    return np.ascontiguousarray(arr)


def reshape_perm(in_shape: Sequence[int], perm: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...] | None:
    """A storage order for ``x.reshape(out_shape)`` that makes the reshape free, if one exists.

    ``x`` (ONNX shape ``in_shape``) is stored as ``x.transpose(perm)``.  A reshape only
    merges or splits runs of adjacent axes ("blocks": minimal groups of input and output
    axes with equal products).  When every block's input axes lie next to each other and
    in order in the stored tensor, storing the output's blocks in that same order, each
    block's output axes in order, gives exactly the stored buffer: a RESHAPE, no data
    moved.  Example: NHWC-stored ``[N, C, H, W] -> [N, C, H*W]`` is free stored as
    ``[N, H*W, C]`` (perm ``(0, 2, 1)``).  Size-1 output axes go right after the axis
    before them.  Returns None when some block is split or reordered in storage.
    """
    ins = [a for a in range(len(in_shape)) if in_shape[a] != 1]
    outs = [a for a in range(len(out_shape)) if out_shape[a] != 1]
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ins) and j < len(outs):
        bi, bo = [ins[i]], [outs[j]]
        pi, po = int(in_shape[ins[i]]), int(out_shape[outs[j]])
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po and i < len(ins):
                pi *= int(in_shape[ins[i]])
                bi.append(ins[i])
                i += 1
            elif po < pi and j < len(outs):
                po *= int(out_shape[outs[j]])
                bo.append(outs[j])
                j += 1
            else:
                return None
        blocks.append((bi, bo))
    if i != len(ins) or j != len(outs):
        return None
    stored = [a for a in perm if in_shape[a] != 1]
    order: list[int] = []
    pos = 0
    while pos < len(stored):
        block = next((b for b in blocks if b[0][0] == stored[pos]), None)
        if block is None or stored[pos : pos + len(block[0])] != block[0]:
            return None
        order.extend(block[1])
        pos += len(block[0])
    for a in range(len(out_shape)):
        if out_shape[a] == 1:
            order.insert(order.index(a - 1) + 1 if a - 1 in order else 0, a)
    return tuple(order)
