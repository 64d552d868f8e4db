"""Pooling and mean reductions: MAX_POOL_2D, AVERAGE_POOL_2D, MEAN.

GlobalAveragePool: in int8 it becomes MEAN over H and W.  TFLite's int8
AVERAGE_POOL_2D cannot rescale, so its output would have to keep the input's
(wide) range and lose ~10 dB of SNR on the pooled vector; MEAN rescales, and Vela
still runs it on the NPU (as a depthwise convolution) for any map up to 4096 wide.
In float32 it is an AVERAGE_POOL_2D with a full-size VALID kernel when that fits
Vela's pooling limits (height <= 256, area <= 65536), else MEAN.
GlobalMaxPool is always a full-kernel MAX_POOL_2D.
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options, QParams
from nirc.tflite.context import Emitter, Value
from nirc.tflite.fusion import STANDALONE_ACTIVATION, Activation
from nirc.tflite.graph import GraphInfo, attr_int, attr_ints
from nirc.tflite.layout import invert, permute_shape, reshape_perm, stored_axis
from nirc.tflite.ops_conv import apply_pad
from nirc.tflite.padding import PadPlan, needs_end_extension, onnx_pads, plan_padding, window_params

VELA_POOL_MAX_HEIGHT = 256
VELA_POOL_MAX_AREA = 256 * 256
#: Vela's AVERAGE_POOL_2D with SAME padding: "Kernel width and height must be less than or equal to 8".
VELA_POOL_SAME_MAX_KERNEL = 8
#: Vela's MEAN: "Reduced axis must be less than 4096".
VELA_MEAN_MAX_AXIS = 4096


def _pool_plan(info: GraphInfo, node: onnx.NodeProto) -> tuple[PadPlan, list[int], tuple[int, ...], bool]:
    x_shape = info.shape(node.input[0])
    y_shape = info.shape(node.output[0])
    kernel = attr_ints(node, "kernel_shape", [])
    strides, dilations, _ = window_params(node, kernel)
    pads = onnx_pads(node, x_shape[2:], kernel, y_shape[2:])
    include = bool(attr_int(node, "count_include_pad", 0))
    # A SAME average pool wider than Vela's limit would fall back to the CPU; explicit
    # padding + VALID (+ the count map below) keeps it on the NPU, exactly.
    wide = max(kernel, default=1) > VELA_POOL_SAME_MAX_KERNEL
    allow_same = not (node.op_type == "AveragePool" and (include or wide))
    plan = plan_padding(x_shape[2:], kernel, strides, dilations, pads, y_shape[2:], allow_same=allow_same)
    return plan, kernel, strides, needs_end_extension(pads, plan)


def check_pool(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]) or len(info.shape(node.input[0])) != 4:
        return "only 2-D pooling (4-D NCHW input) is supported"
    if len([o for o in node.output if o]) > 1:
        return "the Indices output is not supported"
    if any(d != 1 for d in attr_ints(node, "dilations", [1, 1])):
        return "dilated pooling is not supported"
    _, _, _, extended = _pool_plan(info, node)
    if node.op_type == "AveragePool":
        include = bool(attr_int(node, "count_include_pad", 0))
        if include and extended:
            return "ceil_mode windows past the padding with count_include_pad=1"
    return None


def pool_fusable(info: GraphInfo, node: onnx.NodeProto) -> bool:
    return check_pool(info, node) is None


def needs_count_fixup(info: GraphInfo, node: onnx.NodeProto) -> bool:
    """AveragePool excluding padding where SAME cannot express the pads.

    Lowered as PAD(0) + VALID AVERAGE_POOL_2D (sum / k*k) + MUL by the constant map
    k*k / (real elements in each window), which is exact and all NPU ops.
    """
    if node.op_type != "AveragePool" or check_pool(info, node) is not None:
        return False
    include = bool(attr_int(node, "count_include_pad", 0))
    return not include and _pool_plan(info, node)[0].explicit is not None


def pool_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    if needs_count_fixup(info, node):
        return []
    return [node.input[0], node.output[0]]


def _count_map(in_sizes: tuple[int, ...], kernel: list[int], strides: tuple[int, ...],
               begins: tuple[int, ...], out_sizes: tuple[int, ...]) -> np.ndarray:  # fmt: skip
    counts = []
    for i in range(2):
        start = np.arange(out_sizes[i]) * strides[i] - begins[i]
        lo, hi = np.maximum(start, 0), np.minimum(start + kernel[i], in_sizes[i])
        counts.append(np.maximum(hi - lo, 1))
    return (kernel[0] * kernel[1] / np.outer(counts[0], counts[1])).astype(np.float32)


def lower_pool(em: Emitter, node: onnx.NodeProto) -> None:
    plan, kernel, strides, _ = _pool_plan(em.info, node)
    act, out_name = em.activation(node)
    is_max = node.op_type == "MaxPool"
    x = em.value(node.input[0])
    if not needs_count_fixup(em.info, node):  # MAX/AVERAGE_POOL_2D int8 keep the input's parameters
        x = em.requant(x, em.qparams(out_name), out_name)
    x = apply_pad(em, x, plan, out_name, fill_min=is_max)
    y = em.define(out_name, shape=em.shape(node.output[0]))
    opts = Options(
        "Pool2DOptions",
        (("Padding", plan.mode), ("StrideW", strides[1]), ("StrideH", strides[0]),
         ("FilterWidth", kernel[1]), ("FilterHeight", kernel[0]), ("FusedActivationFunction", act)),
    )  # fmt: skip
    if not needs_count_fixup(em.info, node):
        em.op(Op.MAX_POOL_2D if is_max else Op.AVERAGE_POOL_2D, [x.tensor], [y.tensor], opts)
        return
    # AVERAGE_POOL_2D int8 does not rescale: the sum/k*k intermediate keeps the input's
    # parameters (its values stay within the input's range, zero included).
    mean = em.new_tensor(f"{out_name}/window_mean", y.stored_shape, em.quant_of(x))
    plain = Options("Pool2DOptions", tuple((k, v) for k, v in opts.fields if k != "FusedActivationFunction"))
    em.op(Op.AVERAGE_POOL_2D, [x.tensor], [mean], plain)
    in_shape, out_shape = em.shape(node.input[0]), em.shape(node.output[0])
    begins = tuple(p[0] for p in plan.explicit or ((0, 0), (0, 0)))
    fix = _count_map(in_shape[2:], kernel, strides, begins, out_shape[2:]).reshape(
        1, out_shape[2], out_shape[3], 1
    )
    fix_t = em.float_const(f"{out_name}/count_fix", fix)
    em.op(Op.MUL, [mean, fix_t], [y.tensor], Options("MulOptions", (("FusedActivationFunction", act),)))


def check_global(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]) or len(info.shape(node.input[0])) != 4:
        return "only 4-D NCHW input is supported"
    return None


def global_as_pool(info: GraphInfo, node: onnx.NodeProto) -> bool:
    if check_global(info, node) is not None:
        return False
    _, _, h, w = info.shape(node.input[0])
    return node.op_type == "GlobalMaxPool" or (h <= VELA_POOL_MAX_HEIGHT and h * w <= VELA_POOL_MAX_AREA)


def lower_global_pool(em: Emitter, node: onnx.NodeProto) -> None:
    act, out_name = em.activation(node)
    x = em.value(node.input[0])
    _, h, w, _ = x.stored_shape
    y = em.define(out_name, shape=em.shape(node.output[0]))
    y_q = em.quant_of(y)
    if global_as_pool(em.info, node) and not (em.int8 and node.op_type == "GlobalAveragePool"):
        x = em.requant(x, y_q, out_name)
        opts = Options(
            "Pool2DOptions",
            (("Padding", 1), ("StrideW", 1), ("StrideH", 1), ("FilterWidth", w), ("FilterHeight", h),
             ("FusedActivationFunction", act)),
        )  # fmt: skip
        builtin = Op.MAX_POOL_2D if node.op_type == "GlobalMaxPool" else Op.AVERAGE_POOL_2D
        em.op(builtin, [x.tensor], [y.tensor], opts)
        return
    target = y.tensor if act == Activation.NONE else em.new_tensor(f"{out_name}/mean", y.stored_shape, y_q)
    if _needs_vela_form(x, [1, 2]):  # an axis too long for one MEAN: reduce an a x b view
        mid = _vela_mean(em, x, [2, 3], out_name, y_q)
        em.reshape(mid.tensor, target)
    else:
        axes = em.int_const(f"{out_name}/axes", [1, 2])
        em.op(Op.MEAN, [x.tensor, axes], [target], Options("ReducerOptions", (("KeepDims", True),)))
    if act != Activation.NONE:  # MEAN has no fused activation
        em.op(STANDALONE_ACTIVATION[act], [target], [y.tensor])


def reduce_axes(info: GraphInfo, node: onnx.NodeProto) -> list[int] | None:
    """Reduced axes (sorted, non-negative) from the attribute or input, None when computed at run time."""
    rank = len(info.shape(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        axes = info.const(node.input[1])
        if axes is None:
            return None
        values = [int(v) for v in axes.reshape(-1)]
    else:
        values = attr_ints(node, "axes", [])
    if not values:
        noop = bool(attr_int(node, "noop_with_empty_axes", 0))
        return [] if noop else list(range(rank))
    return sorted(v + rank if v < 0 else v for v in values)


def check_reduce_mean(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]):
        return "input shape unknown"
    if reduce_axes(info, node) is None:
        return "axes are not constant"
    return None


def lower_reduce_mean(em: Emitter, node: onnx.NodeProto) -> None:
    axes = reduce_axes(em.info, node)
    if axes is None:
        raise BackendError(f"ReduceMean '{node.name}': axes are not constant")
    x = em.stored(node.input[0])
    out_name = node.output[0]
    if not axes:
        em.alias(out_name, x)
        return
    keep = bool(attr_int(node, "keepdims", 1))
    x4, extra = _as_4d(em, x, axes, out_name)
    if _needs_vela_form(x4, sorted(stored_axis(a + extra, x4.perm) for a in axes)):
        mid = _vela_mean(em, x4, [a + extra for a in axes], out_name, em.qparams(out_name) if em.int8 else None)
        em.alias(out_name, _free_reshape(em, mid, em.shape(out_name), out_name) if extra or not keep else mid)
        return
    stored_axes = sorted(stored_axis(a, x.perm) for a in axes)
    kept_order = [p for p in x.perm if p not in axes]
    opts = Options("ReducerOptions", (("KeepDims", keep),))
    axes_t = em.int_const(f"{out_name}/axes", stored_axes)
    if keep:
        y = em.define(out_name, perm=x.perm)
        em.op(Op.MEAN, [x.tensor, axes_t], [y.tensor], opts)
    elif kept_order == sorted(kept_order) and len(kept_order) != 4:
        y = em.define(out_name)
        em.op(Op.MEAN, [x.tensor, axes_t], [y.tensor], opts)
    else:
        kept_shape = tuple(1 if i in axes else d for i, d in enumerate(x.onnx_shape))
        mid = em.define(f"{out_name}/keep", perm=x.perm, quant=em.qparams(out_name), shape=kept_shape)
        em.op(Op.MEAN, [x.tensor, axes_t], [mid.tensor], Options("ReducerOptions", (("KeepDims", True),)))
        em.alias(out_name, em.reshaped(mid, em.shape(out_name), out_name))


def _as_4d(em: Emitter, x: Value, axes: list[int], name: str) -> tuple[Value, int]:
    """A rank < 4 tensor seen as Vela sees it (leading unit axes), when that needs the Vela form.

    Returns the 4-D view (one free RESHAPE) and the number of axes prepended, or ``x``
    and 0 when the plain MEAN is placeable as written.
    """
    extra = 4 - len(x.stored_shape)
    if extra <= 0:
        return x, 0
    perm = (*range(extra), *(p + extra for p in x.perm))
    view = Value(-1, perm, (1,) * extra + x.onnx_shape)
    if not _needs_vela_form(view, sorted(stored_axis(a + extra, perm) for a in axes)):
        return x, 0
    view.tensor = em.new_tensor(f"{name}/as_4d", view.stored_shape, em.quant_of(x))
    em.reshape(x.tensor, view.tensor)
    return view, extra


def _free_reshape(em: Emitter, v: Value, shape: tuple[int, ...], name: str) -> Value:
    """``v`` reshaped to ``shape`` stored in the order that moves no data (see reshape_perm)."""
    perm = reshape_perm(v.onnx_shape, v.perm, shape)
    if perm is None:
        return em.reshaped(v, shape, name)
    out = em.new_tensor(f"{name}/reshape", permute_shape(shape, perm), em.quant_of(v))
    em.reshape(v.tensor, out)
    return Value(out, perm, shape)


def _needs_vela_form(x: Value, stored_axes: list[int]) -> bool:
    """A 4-D NHWC mean Vela would leave on the CPU as written (see :func:`_vela_mean`)."""
    if len(x.stored_shape) != 4:  # any storage order: the rule is about the stored shape
        return False
    _, h, w, _ = x.stored_shape
    over_depth = 3 in stored_axes and (h > 1 or w > 1)
    too_long = any(x.stored_shape[a] >= VELA_MEAN_MAX_AXIS for a in stored_axes if a in (1, 2))
    return over_depth or (too_long and stored_axes == [1, 2] and _factor_pair(h * w) is not None)


def _factor_pair(n: int) -> tuple[int, int] | None:
    """``(a, b)`` with ``a * b == n`` and both below Vela's MEAN axis limit, ``a`` as small as possible."""
    for a in range(max(1, -(-n // (VELA_MEAN_MAX_AXIS - 1))), VELA_MEAN_MAX_AXIS):
        if n % a == 0 and n // a < VELA_MEAN_MAX_AXIS:
            return a, n // a
    return None


def _vela_mean(em: Emitter, x: Value, axes: list[int], name: str, out_q: QParams | None) -> Value:
    """Mean over ONNX ``axes`` of an NHWC map (keepdims), in forms Vela runs on the NPU.

    * Over channels (alone or with space): Vela reduces depth only when H, W or C is 1,
      so space is reduced first (if asked), then the channels of a ``1 x (H*W) x C`` view
      (a free RESHAPE). The mean of equal-sized means is the mean.
    * Over H and W with an axis of 4096 or more (Vela's limit): the same elements viewed
      as ``a x b`` with ``a * b = H * W`` and both below the limit.

    Intermediate spatial means stay within the input's range, so they keep its int8
    parameters; the last MEAN rescales to ``out_q``.
    """
    n, h, w, c = x.stored_shape
    stored = sorted(stored_axis(a, x.perm) for a in axes)
    keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.onnx_shape))
    reducer = Options("ReducerOptions", (("KeepDims", True),))
    if 3 not in stored:  # H and W, too long for one MEAN axis
        pair = _factor_pair(h * w)
        if pair is None:
            raise BackendError(f"ReduceMean '{name}': {h}x{w} cannot be viewed with both axes below 4096")
        view = em.new_tensor(f"{name}/view", (n, pair[0], pair[1], c), em.quant_of(x))
        em.reshape(x.tensor, view)
        y = em.new_tensor(f"{name}/mean", (n, 1, 1, c), out_q)
        em.op(Op.MEAN, [view, em.int_const(f"{name}/axes", [1, 2])], [y], reducer)
        return Value(y, x.perm, keep_shape)
    spatial = [a for a in stored if a in (1, 2)]
    if spatial and any(x.stored_shape[a] > 1 for a in spatial):
        partial = list(x.stored_shape)
        for a in spatial:
            partial[a] = 1
        mid = em.new_tensor(f"{name}/spatial_mean", tuple(partial), em.quant_of(x))
        em.op(Op.MEAN, [x.tensor, em.int_const(f"{name}/spatial_axes", spatial)], [mid], reducer)
        x = Value(mid, x.perm, tuple(partial[i] for i in invert(x.perm)))
        n, h, w, c = x.stored_shape
    source = x.tensor
    if h > 1 and w > 1:
        source = em.new_tensor(f"{name}/rows", (n, 1, h * w, c), em.quant_of(x))
        em.reshape(x.tensor, source)
    reduced = em.new_tensor(f"{name}/channel_mean", (n, 1, h * w, 1) if h > 1 and w > 1 else (n, h, w, 1), out_q)
    em.op(Op.MEAN, [source, em.int_const(f"{name}/channel_axis", [3])], [reduced], reducer)
    if h > 1 and w > 1:
        back = em.new_tensor(f"{name}/channel_mean_nhwc", (n, h, w, 1), out_q)
        em.reshape(reduced, back)
        reduced = back
    return Value(reduced, x.perm, keep_shape)
