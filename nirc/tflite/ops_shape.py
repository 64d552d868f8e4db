"""Data movement: Reshape/Flatten/Squeeze/Unsqueeze, Transpose, Concat, Split, Slice, Pad.

All attributes that name axes are remapped to the stored (NHWC) layout.  Rank
changes go through ONNX element order: the emitter turns the needed relayouts into
RESHAPEs when no data moves (e.g. flattening a 1x1 feature map), and a flatten
feeding only FC layers keeps NHWC order and permutes the FC weight instead.
ONNX Transpose is a relabelling of the stored axes and emits nothing by itself.
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter, Value
from nirc.tflite.graph import GraphInfo, attr_int, attr_ints, attr_str, has_attr
from nirc.tflite.layout import (
    compose,
    invert,
    is_memory_noop,
    nchw_flatten_order,
    permute_shape,
    reshape_perm,
    standard_perm,
    stored_axis,
)
from nirc.tflite.ops_fc import check_gemm, check_matmul


def _fc_only_users(info: GraphInfo, name: str) -> bool:
    users = info.users(name)
    if not users or info.is_graph_output(name):
        return False
    for idx, slot in users:
        node = info.nodes[idx]
        if slot != 0:
            return False
        if node.op_type == "Gemm" and check_gemm(info, node) is None:
            continue
        if node.op_type == "MatMul" and check_matmul(info, node) is None:
            b = info.const(node.input[1])
            if b is not None and b.ndim == 2:
                continue
        return False
    return True


def lower_reshape(em: Emitter, node: onnx.NodeProto) -> None:
    """Reshape, Flatten, Squeeze and Unsqueeze: all a RESHAPE in ONNX element order."""
    name = node.output[0]
    out_shape = em.shape(name)
    x = em.stored(node.input[0])
    x = em.requant(x, em.qparams(name), name)
    in_shape = x.onnx_shape
    if (
        len(in_shape) == 4
        and len(out_shape) == 2
        and out_shape[0] == in_shape[0]
        and in_shape[2] * in_shape[3] > 1
        and x.perm == standard_perm(4)
        and _fc_only_users(em.info, name)
    ):
        _, c, h, w = in_shape
        flat = em.new_tensor(name, out_shape, em.quant_of(x))
        em.reshape(x.tensor, flat)
        em.alias(name, Value(flat, (0, 1), tuple(out_shape), nchw_flatten_order(c, h, w)))
        return
    standard = standard_perm(len(out_shape))
    free = is_memory_noop(x.stored_shape, invert(x.perm)) and is_memory_noop(out_shape, standard)
    perm = None if free else reshape_perm(x.onnx_shape, x.perm, out_shape)
    if perm is not None:  # the stored buffer already is the result in layout ``perm``
        y = em.new_tensor(name, permute_shape(out_shape, perm), em.quant_of(x))
        em.reshape(x.tensor, y)
        em.alias(name, Value(y, perm, tuple(out_shape)))
        return
    em.alias(name, em.reshaped(x, out_shape, name, _reshape_layout(x, out_shape)))


def _reshape_layout(x: Value, out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Where a reshaped tensor is stored: the standard layout unless that alone moves data.

    A reshape is a RESHAPE in ONNX element order.  When storing the result in the
    standard (NHWC) layout would need a TRANSPOSE (the head split
    ``[B, N, C] -> [B, N, heads, C/heads]`` of attention), the result keeps the ONNX
    order: its consumers ask for the layout they need, and the emitter converts once,
    only if one does (a BATCH_MATMUL, a Transpose or a Split usually does not).
    """
    standard = standard_perm(len(out_shape))
    return standard if is_memory_noop(out_shape, standard) else tuple(range(len(out_shape)))


def lower_transpose(em: Emitter, node: onnx.NodeProto) -> None:
    """y = x.transpose(p): the stored tensor of x already is y in another layout."""
    src = em.values.get(node.input[0]) or em.value(node.input[0])
    rank = len(src.onnx_shape)
    p = tuple(attr_ints(node, "perm", range(rank - 1, -1, -1)))
    out_shape = tuple(src.onnx_shape[i] for i in p)
    em.alias(node.output[0], Value(src.tensor, compose(invert(p), src.perm), out_shape))


def lower_concat(em: Emitter, node: onnx.NodeProto) -> None:
    name = node.output[0]
    out_shape = em.shape(name)
    perm = standard_perm(len(out_shape))
    out_q = em.qparams(name)
    inputs = []
    for src in node.input:
        if not src or 0 in em.shape(src):
            continue
        const = em.const(src)
        if const is not None:
            arr = np.ascontiguousarray(np.asarray(const, np.float32).transpose(perm))
            inputs.append(em.float_const(src, arr, out_q))
        else:
            inputs.append(em.requant(em.value(src, perm), out_q, src).tensor)
    axis = stored_axis(attr_int(node, "axis", 0), perm)
    y = em.define(name, perm=perm)
    em.op(Op.CONCATENATION, inputs, [y.tensor], Options("ConcatenationOptions", (("Axis", axis),)))


def check_concat(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if all(info.is_const(n) for n in node.input if n):
        return "all inputs are constant"
    return None


def split_sizes(info: GraphInfo, node: onnx.NodeProto) -> list[int] | None:
    dim_axis = attr_int(node, "axis", 0)
    shape = info.shape(node.input[0])
    dim = shape[dim_axis]
    if len(node.input) > 1 and node.input[1]:
        sizes = info.const(node.input[1])
        return None if sizes is None else [int(s) for s in sizes.reshape(-1)]
    if has_attr(node, "split"):
        return attr_ints(node, "split", [])
    n = attr_int(node, "num_outputs", len(node.output))
    chunk = -(-dim // n)
    return [*([chunk] * (n - 1)), dim - chunk * (n - 1)]


def check_split(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]):
        return "input shape unknown"
    sizes = split_sizes(info, node)
    if sizes is None:
        return "split sizes are not constant"
    if any(s <= 0 for s in sizes):
        return "empty split outputs"
    return None


def lower_split(em: Emitter, node: onnx.NodeProto) -> None:
    sizes = split_sizes(em.info, node) or []
    outs = list(node.output)
    out_q = em.qparams(outs[0]) if outs[0] else None
    x = em.requant(em.stored(node.input[0]), out_q, outs[0])
    axis = stored_axis(attr_int(node, "axis", 0), x.perm)
    tensors = []
    for i, o in enumerate(outs):
        if o:
            tensors.append(em.define(o, perm=x.perm, quant=em.quant_of(x)).tensor)
        else:
            shape = list(x.stored_shape)
            shape[axis] = sizes[i]
            tensors.append(em.new_tensor(f"{node.output[0]}/unused{i}", shape, em.quant_of(x)))
    axis_t = em.int_const(f"{outs[0]}/axis", np.asarray(axis))
    if len(set(sizes)) == 1:
        em.op(Op.SPLIT, [axis_t, x.tensor], tensors, Options("SplitOptions", (("NumSplits", len(sizes)),)))
    else:
        sizes_t = em.int_const(f"{outs[0]}/sizes", sizes)
        em.op(
            Op.SPLIT_V,
            [x.tensor, sizes_t, axis_t],
            tensors,
            Options("SplitVOptions", (("NumSplits", len(sizes)),)),
        )


def _slice_params(info: GraphInfo, node: onnx.NodeProto) -> list[tuple[int, int, int]] | None:
    """(start, stop, step) per ONNX axis with ONNX clamping (Python slice semantics)."""
    shape = info.shape(node.input[0])
    consts = [info.const(n) if len(node.input) > i and node.input[i] else None for i, n in
              enumerate(list(node.input) + [""] * (5 - len(node.input)))]  # fmt: skip
    starts, ends = consts[1], consts[2]
    if starts is None or ends is None:
        return None
    rank = len(shape)
    axes = consts[3].reshape(-1) if consts[3] is not None else np.arange(len(starts.reshape(-1)))
    steps = consts[4].reshape(-1) if consts[4] is not None else np.ones(len(axes), np.int64)
    if (len(node.input) > 3 and node.input[3] and consts[3] is None) or (
        len(node.input) > 4 and node.input[4] and consts[4] is None
    ):
        return None
    params = [(0, d, 1) for d in shape]
    for s, e, a, st in zip(starts.reshape(-1), ends.reshape(-1), axes, steps, strict=True):
        axis = int(a) + rank if int(a) < 0 else int(a)
        big = 2**62
        s_i = int(np.clip(int(s), -big, big))
        e_i = int(np.clip(int(e), -big, big))
        params[axis] = slice(s_i, e_i, int(st)).indices(shape[axis])
    return params


def check_slice(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]):
        return "input shape unknown"
    params = _slice_params(info, node)
    if params is None:
        return "starts/ends/axes/steps are not constant"
    if any(len(range(*p)) == 0 for p in params):
        return "empty slice"
    return None


def lower_slice(em: Emitter, node: onnx.NodeProto) -> None:
    params = _slice_params(em.info, node) or []
    name = node.output[0]
    x = em.requant(em.stored(node.input[0]), em.qparams(name), name)
    stored = [params[p] for p in x.perm]
    y = em.define(name, perm=x.perm)
    if all(step == 1 for _, _, step in stored):
        begin = [s for s, _, _ in stored]
        size = [len(range(*p)) for p in stored]
        em.op(Op.SLICE, [x.tensor, em.int_const(f"{name}/begin", begin), em.int_const(f"{name}/size", size)],
              [y.tensor])  # fmt: skip
        return
    if _channel_strided(x, stored):
        _channel_strided_slice(em, x, stored[3], y, name)
        return
    end_mask = 0
    ends = []
    for i, (_, stop, step) in enumerate(stored):
        if step < 0 and stop < 0:
            end_mask |= 1 << i
            ends.append(0)
        else:
            ends.append(stop)
    inputs = [
        x.tensor,
        em.int_const(f"{name}/begin", [s for s, _, _ in stored]),
        em.int_const(f"{name}/end", ends),
        em.int_const(f"{name}/strides", [st for _, _, st in stored]),
    ]
    em.op(Op.STRIDED_SLICE, inputs, [y.tensor], Options("StridedSliceOptions", (("EndMask", end_mask),)))


def _channel_strided(x: Value, stored: list[tuple[int, int, int]]) -> bool:
    """A slice of an NHWC map that steps (forwards) through the channels only.

    Vela's STRIDED_SLICE strides only over H or W (a channel stride leaves it on the CPU).
    """
    if len(stored) != 4 or x.perm != standard_perm(4):
        return False
    shape = x.stored_shape
    full = all(p == (0, d, 1) for p, d in zip(stored[:3], shape[:3], strict=True))
    return full and stored[3][2] > 1


def _channel_strided_slice(em: Emitter, x: Value, channels: tuple[int, int, int], y: Value, name: str) -> None:
    """``x[..., start:stop:step]`` as a stride over W of the ``[N, H*W, C, 1]`` view (free RESHAPEs).

    Exact: the same elements are selected; only how the buffer is viewed changes.
    """
    n, h, w, c = x.stored_shape
    start, stop, step = channels
    count = len(range(start, stop, step))
    view = em.new_tensor(f"{name}/channels_as_width", (n, h * w, c, 1), em.quant_of(x))
    em.reshape(x.tensor, view)
    picked = em.new_tensor(f"{name}/picked", (n, h * w, count, 1), em.quant_of(x))
    inputs = [
        view,
        em.int_const(f"{name}/begin", [0, 0, start, 0]),
        em.int_const(f"{name}/end", [n, h * w, start + step * (count - 1) + 1, 1]),
        em.int_const(f"{name}/strides", [1, 1, step, 1]),
    ]
    em.op(Op.STRIDED_SLICE, inputs, [picked], Options("StridedSliceOptions", (("EndMask", 0),)))
    em.reshape(picked, y.tensor)


def _pad_params(info: GraphInfo, node: onnx.NodeProto) -> tuple[list[tuple[int, int]], float] | None:
    shape = info.shape(node.input[0])
    rank = len(shape)
    pads = info.const(node.input[1]) if len(node.input) > 1 else None
    if pads is None:
        return None
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        v = info.const(node.input[2])
        if v is None:
            return None
        value = float(v.reshape(-1)[0]) if v.size else 0.0
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        a = info.const(node.input[3])
        if a is None:
            return None
        axes = [int(i) + rank if int(i) < 0 else int(i) for i in a.reshape(-1)]
    flat = [int(p) for p in pads.reshape(-1)]
    per_axis = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        per_axis[axis] = (flat[i], flat[i + len(axes)])
    return per_axis, value


def check_pad(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    mode_s = attr_str(node, "mode", "constant")
    if mode_s not in ("constant", "reflect"):
        return f"mode '{mode_s}' is not supported"
    if not info.has_shape(node.input[0]):
        return "input shape unknown"
    params = _pad_params(info, node)
    if params is None:
        return "pads/constant_value/axes are not constant"
    if any(b < 0 or e < 0 for b, e in params[0]):
        return "negative pads are not supported"
    if mode_s == "reflect" and any(
        max(b, e) >= d for (b, e), d in zip(params[0], info.shape(node.input[0]), strict=True)
    ):
        return "reflect pads as large as the axis"
    return None


def lower_pad(em: Emitter, node: onnx.NodeProto) -> None:
    per_axis, value = _pad_params(em.info, node) or ([], 0.0)
    mode = attr_str(node, "mode", "constant")
    name = node.output[0]
    x = em.requant(em.value(node.input[0]), em.qparams(name), name)
    paddings = em.int_const(f"{name}/paddings", [list(per_axis[p]) for p in x.perm])
    y = em.define(name, perm=x.perm)
    if mode == "reflect":
        em.op(Op.MIRROR_PAD, [x.tensor, paddings], [y.tensor], Options("MirrorPadOptions", (("Mode", 0),)))
    elif value == 0.0:
        em.op(Op.PAD, [x.tensor, paddings], [y.tensor])
    else:
        fill = em.float_const(f"{name}/value", np.asarray([value], np.float32), em.quant_of(x))
        em.op(Op.PADV2, [x.tensor, paddings, fill], [y.tensor])
