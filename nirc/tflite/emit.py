"""Top level: check, plan (fusion, int8 parameters), lower node by node, serialise."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Literal

import onnx

from nirc.errors import BackendError, NircError, UnsupportedOperatorError
from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import QParams
from nirc.tflite.context import Emitter, Value
from nirc.tflite.fusion import FusionPlan, plan_fusion
from nirc.tflite.graph import GraphInfo, describe
from nirc.tflite.layout import identity, permute_shape, standard_perm
from nirc.tflite.model import TensorIO, TFLiteModel
from nirc.tflite.ops import LOWERINGS
from nirc.tflite.patterns import PatternPlan, plan_patterns
from nirc.tflite.qplan import QuantPlan
from nirc.tflite.unlowered import format_unsupported

_FLOAT = onnx.TensorProto.FLOAT


def supported_ops() -> frozenset[str]:
    """ONNX op types (default domain) the emitter lowers."""
    return frozenset(LOWERINGS)


def unsupported_ops(model: onnx.ModelProto) -> Counter[str]:
    """Op types (``domain.Op`` outside the default domain) the emitter has no lowering for, with counts.

    Constant-only nodes and nodes absorbed into a multi-node pattern are exempt, as in
    :func:`check_supported`; callers use this to decide before any work whether the
    passes they will run can remove what is left.
    """
    info = GraphInfo.build(model, evaluate=False)
    patterns = _patterns(model)
    unsupported: Counter[str] = Counter()
    for idx, node in info.live_nodes():
        if idx in patterns.skipped:
            continue
        rule = LOWERINGS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            unsupported[key] += 1
    return unsupported


def check_supported(model: onnx.ModelProto, source: str) -> None:
    """Raise UnsupportedOperatorError naming every unsupported op type (with counts)
    and every node whose attributes cannot be lowered exactly.

    Nodes that only compute constants (shape arithmetic) are exempt: they are folded.
    So are nodes absorbed into a multi-node pattern (see :mod:`~nirc.tflite.patterns`).
    """
    unsupported = unsupported_ops(model)
    patterns = _patterns(model)
    problems: list[str] = []
    if not unsupported:
        info = GraphInfo.build(model)
        for idx, node in info.live_nodes():
            if idx in patterns.skipped or idx in patterns.lower:
                continue
            try:
                reason = LOWERINGS[node.op_type].check(info, node)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                reason = f"malformed node ({type(exc).__name__}: {exc})"
            if reason:
                problems.append(f"{describe(node, idx)}: {reason}")
    parts = []
    if unsupported:
        parts.append(format_unsupported(unsupported))
    if problems:
        parts.append("unsupported attributes: " + "; ".join(problems))
    if parts:
        raise UnsupportedOperatorError(f"{source}: " + "; ".join(parts))


def _patterns(model: onnx.ModelProto) -> PatternPlan:
    """Pattern plan for the check; only GELU absorbs ops the check would reject (Erf), so only then."""
    if not any(n.op_type == "Erf" for n in model.graph.node):
        return PatternPlan()
    return plan_patterns(GraphInfo.build(model))


def plan_lowering(info: GraphInfo) -> tuple[PatternPlan, FusionPlan]:
    """Which nodes lower as multi-node patterns and which fuse into their producer.

    Shared with :func:`nirc.quant.act16.promotable_tensors`, which must see the graph exactly
    as the emitter will lower it.
    """
    patterns = plan_patterns(info)
    fusion = plan_fusion(info, LOWERINGS, exclude=patterns.skipped | set(patterns.lower))
    fusion.skipped |= patterns.unplanned
    return patterns, fusion


def emit_tflite(
    model: onnx.ModelProto,
    *,
    dtype: Literal["float32", "int8"] = "float32",
    ranges: Mapping[str, tuple[float, float]] | None = None,
    io_dtype: Literal["int8", "float32"] = "int8",
    source: str = "<model>",
    wide: Collection[str] = (),
) -> TFLiteModel:
    """Lower an opset-18, statically shaped ONNX model to a TFLite flatbuffer.

    ``dtype="int8"`` needs ``ranges`` for every activation tensor; ``io_dtype``
    then selects int8 model I/O or float I/O with QUANTIZE/DEQUANTIZE at the edges.
    ``wide``: ONNX tensors to hold as int16 activations (see :mod:`nirc.tflite.wide`);
    the model's inputs and outputs stay int8.
    """
    if dtype not in ("float32", "int8"):
        raise BackendError(f"{source}: dtype must be 'float32' or 'int8', got {dtype!r}")
    if io_dtype not in ("float32", "int8"):
        raise BackendError(f"{source}: io_dtype must be 'float32' or 'int8', got {io_dtype!r}")
    check_supported(model, source)
    info = GraphInfo.build(model)
    for name in info.inputs:
        info.shape(name)
        if info.elem_types.get(name) != _FLOAT:
            raise BackendError(f"{source}: graph input '{name}' is not float32")
    for name in info.outputs:
        if info.is_const(name):
            raise BackendError(f"{source}: graph output '{name}' is a constant")
    patterns, fusion = plan_lowering(info)
    plan = None
    if dtype == "int8":
        plan = QuantPlan(info, fusion, LOWERINGS, ranges or {}, source, wide)
        if wide:
            from nirc.tflite.wide import check_wide

            # After planning: a tied group (a CONCATENATION and its inputs) is wide as a whole.
            check_wide(info, fusion, plan.wide | set(wide), source, patterns.skipped | set(patterns.lower))
    em = Emitter(info, int8=dtype == "int8", plan=plan, fusion=fusion)
    float_io = dtype == "int8" and io_dtype == "float32"

    inputs = [_emit_input(em, name, float_io) for name in info.inputs]
    for idx, node in info.live_nodes():
        if idx in fusion.skipped or idx in patterns.skipped:
            continue
        em.node_index = idx
        em.wide = plan is not None and fusion.output_name(idx, node) in plan.wide
        try:
            lower = patterns.lower.get(idx, LOWERINGS[node.op_type].lower)
            lower(em, node)
        except NircError:
            raise
        except Exception as exc:
            raise BackendError(f"{source}: lowering {describe(node, idx)} failed: {exc}") from exc
    em.wide = False  # model outputs are int8 (or float) whatever their producer computed in
    outputs = _emit_outputs(em, info.outputs, float_io)
    return TFLiteModel(data=em.mb.serialize(), inputs=tuple(inputs), outputs=tuple(outputs))


def _io(
    name: str, onnx_shape: tuple[int, ...], perm: tuple[int, ...], dtype: str, q: QParams | None
) -> TensorIO:
    return TensorIO(
        name=name,
        onnx_shape=onnx_shape,
        tflite_shape=permute_shape(onnx_shape, perm),
        perm=None if perm == identity(len(perm)) else perm,
        dtype=dtype,
        scale=q.scale[0] if q is not None else None,
        zero_point=q.zero_point[0] if q is not None else None,
    )


def _emit_input(em: Emitter, name: str, float_io: bool) -> TensorIO:
    shape = em.shape(name)
    perm = standard_perm(len(shape))
    q = em.plan.narrow(name) if em.plan is not None else None
    if float_io:
        outer = em.mb.add_tensor(name, permute_shape(shape, perm), "float32")
        inner = em.define(f"{name}", perm=perm, quant=q)
        em.op(Op.QUANTIZE, [outer], [inner.tensor])
        em.mb.inputs.append(outer)
        return _io(name, shape, perm, "float32", None)
    v = em.define(name, perm=perm, quant=q)
    em.mb.inputs.append(v.tensor)
    return _io(name, shape, perm, em.act_dtype, q)


def _emit_outputs(em: Emitter, names: list[str], float_io: bool) -> list[TensorIO]:
    result = []
    used: set[int] = set(em.mb.inputs)
    for name in names:
        v = em.value(name)
        if float_io:
            out = em.mb.add_tensor(name, v.stored_shape, "float32")
            em.op(Op.DEQUANTIZE, [v.tensor], [out])
            em.mb.outputs.append(out)
            result.append(_io(name, v.onnx_shape, v.perm, "float32", None))
            continue
        if v.tensor in used:  # a graph input, or an earlier output: TFLite needs distinct tensors
            copy = em.new_tensor(name, v.stored_shape, em.quant_of(v))
            em.reshape(v.tensor, copy)
            v = Value(copy, v.perm, v.onnx_shape)
        used.add(v.tensor)
        em.mb.outputs.append(v.tensor)
        result.append(_io(name, v.onnx_shape, v.perm, em.act_dtype, em.quant_of(v)))
    return result
