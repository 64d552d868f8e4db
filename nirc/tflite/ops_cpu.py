"""Ops with a TFLite builtin but (mostly) no Ethos-U form: emitted for the Cortex-M, never rejected.

Why: a model that holds one Sqrt or Floor should still compile; Vela leaves what it
cannot place to the CPU and nirc's report lists each such op with Vela's reason
(:mod:`nirc.targets.ethos_u.placement`).  Rejection (exit 3) is kept for op types
with no TFLite form at all.

* Exp, Log, Neg, Abs, Sqrt: the TFLite builtin of the same name; all have int8
  kernels (Vela runs EXP, LOG, NEG and ABS on U55/U65; SQRT stays on the CPU).
* Sin, Cos, Floor, Ceil, Round: TFLite has only float kernels, so an int8 model runs
  them in a float island, DEQUANTIZE -> op -> QUANTIZE (all three on the CPU).
* ReduceMax / ReduceMin / ReduceSum: REDUCE_MAX / REDUCE_MIN / SUM over the stored
  axes; without keepdims the unit axes are dropped by a RESHAPE that moves no data.
* ReduceL2: TFLite has no REDUCE_L2; SQRT(SUM(x * x)) over the stored axes, in a float island
  for int8 (the square of an int8 tensor has no useful int8 range of its own).
* Cast to float32 of a float32 tensor: nothing (exporters leave such no-op casts).
"""

from __future__ import annotations

import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter
from nirc.tflite.graph import GraphInfo, attr_int
from nirc.tflite.layout import permute_shape, reshape_perm, stored_axis
from nirc.tflite.ops_pool import reduce_axes

#: Elementwise ops TFLite runs in int8 directly.
INT8_UNARY = {"Exp": Op.EXP, "Log": Op.LOG, "Neg": Op.NEG, "Abs": Op.ABS, "Sqrt": Op.SQRT}
#: Elementwise ops TFLite has float kernels only for.
FLOAT_UNARY = {"Sin": Op.SIN, "Cos": Op.COS, "Floor": Op.FLOOR, "Ceil": Op.CEIL, "Round": Op.ROUND}
REDUCERS = {"ReduceMax": Op.REDUCE_MAX, "ReduceMin": Op.REDUCE_MIN, "ReduceSum": Op.SUM}

_FLOAT = onnx.TensorProto.FLOAT


def float_in(em: Emitter, tensor: int, name: str) -> int:
    """``tensor`` as float32 for an op TFLite runs in float only: a DEQUANTIZE in an int8 model."""
    if not em.int8:
        return tensor
    out = em.mb.add_tensor(name, em.mb.shape_of(tensor), "float32")
    em.op(Op.DEQUANTIZE, [tensor], [out])
    return out


def float_out(em: Emitter, tensor: int, name: str) -> int:
    """Where a float-only op writes ``tensor``'s value: a float32 twin in an int8 model (see quantize_out)."""
    return em.mb.add_tensor(name, em.mb.shape_of(tensor), "float32") if em.int8 else tensor


def quantize_out(em: Emitter, result: int, tensor: int) -> None:
    """Close a float island: QUANTIZE ``result`` (from :func:`float_out`) into ``tensor``."""
    if result != tensor:
        em.op(Op.QUANTIZE, [result], [tensor])


def lower_unary(em: Emitter, node: onnx.NodeProto) -> None:
    """Layout-agnostic: the output is stored like the input."""
    x = em.stored(node.input[0])
    y = em.define(node.output[0], perm=x.perm)
    if node.op_type in INT8_UNARY:
        em.op(INT8_UNARY[node.op_type], [x.tensor], [y.tensor])
        return
    name = node.output[0]
    fin = float_in(em, x.tensor, f"{name}/float_in")
    fout = float_out(em, y.tensor, f"{name}/float_out")
    em.op(FLOAT_UNARY[node.op_type], [fin], [fout])
    quantize_out(em, fout, y.tensor)


def reducer_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    """REDUCE_MAX/MIN pick input values: int8 input and output share parameters; SUM rescales."""
    return [node.input[0], node.output[0]] if node.op_type != "ReduceSum" else []


def check_reduce(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]):
        return "input shape unknown"
    if reduce_axes(info, node) is None:
        return "axes are not constant"
    if 0 in info.shape(node.input[0]):
        return "the input is empty (its reduction is the identity element, not data)"
    return None


def lower_reduce(em: Emitter, node: onnx.NodeProto) -> None:
    axes = reduce_axes(em.info, node) or []
    name = node.output[0]
    x = em.stored(node.input[0])
    if not axes:
        em.alias(name, x)
        return
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.onnx_shape))
    axes_t = em.int_const(f"{name}/axes", sorted(stored_axis(a, x.perm) for a in axes))
    opts = Options("ReducerOptions", (("KeepDims", True),))
    if attr_int(node, "keepdims", 1):
        y = em.define(name, perm=x.perm, shape=kept)
        em.op(REDUCERS[node.op_type], [x.tensor, axes_t], [y.tensor], opts)
        return
    out_shape = em.shape(name)
    perm = reshape_perm(kept, x.perm, out_shape)  # dropping unit axes never moves data
    if perm is None:
        perm = tuple(range(len(out_shape)))
    mid = em.new_tensor(f"{name}/keep", permute_shape(kept, x.perm), em.qparams(name))
    em.op(REDUCERS[node.op_type], [x.tensor, axes_t], [mid], opts)
    y = em.define(name, perm=perm)
    em.reshape(mid, y.tensor)


def lower_reduce_l2(em: Emitter, node: onnx.NodeProto) -> None:
    axes = reduce_axes(em.info, node) or []
    name = node.output[0]
    x = em.stored(node.input[0])
    if not axes:
        em.alias(name, x)  # noop_with_empty_axes: ReduceL2 of nothing is |x|, but exporters never ask it
        return
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.onnx_shape))
    keep_stored = permute_shape(kept, x.perm)
    axes_t = em.int_const(f"{name}/axes", sorted(stored_axis(a, x.perm) for a in axes))
    src = float_in(em, x.tensor, f"{name}/float_in")
    square = em.mb.add_tensor(f"{name}/square", x.stored_shape, "float32")
    em.op(Op.MUL, [src, src], [square], Options("MulOptions", (("FusedActivationFunction", 0),)))
    total = em.mb.add_tensor(f"{name}/sum", keep_stored, "float32")
    em.op(Op.SUM, [square, axes_t], [total], Options("ReducerOptions", (("KeepDims", True),)))
    keepdims = bool(attr_int(node, "keepdims", 1))
    if keepdims:
        y = em.define(name, perm=x.perm, shape=kept)
        out = y.tensor
    else:
        out_shape = em.shape(name)
        perm = reshape_perm(kept, x.perm, out_shape) or tuple(range(len(out_shape)))
        out = em.new_tensor(f"{name}/keep", keep_stored, em.qparams(name))
    root = float_out(em, out, f"{name}/float_out")
    em.op(Op.SQRT, [total], [root])
    quantize_out(em, root, out)
    if not keepdims:
        y = em.define(name, perm=perm)
        em.reshape(out, y.tensor)


def check_cast(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    to = attr_int(node, "to", 0)
    if to != _FLOAT or info.elem_types.get(node.input[0], _FLOAT) != _FLOAT:
        return "only a float32 -> float32 Cast is supported (other types have no int8 form)"
    return None


def lower_cast(em: Emitter, node: onnx.NodeProto) -> None:
    em.alias(node.output[0], em.stored(node.input[0]))
