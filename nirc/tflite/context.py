"""The emission state the lowerings share: ONNX tensor -> TFLite tensor + layout.

Lowerings ask for an input *in a layout* (:meth:`Emitter.value`) and the emitter
inserts the cheapest conversion: nothing when the layout already matches, a RESHAPE
when the permutation does not move data (e.g. NCHW->NHWC of a 1x1 map), and a
TRANSPOSE only as the last resort.  CNN ops request the NHWC layout every 4-D
activation already has, so CNN graphs get no conversion at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx

from nirc.errors import BackendError
from nirc.tflite.builder import BuiltinOperator, ModelBuilder, Options, QParams
from nirc.tflite.fusion import Activation, FusionPlan
from nirc.tflite.graph import GraphInfo
from nirc.tflite.layout import compose, invert, is_memory_noop, permute_shape, standard_perm
from nirc.tflite.qplan import QuantPlan
from nirc.tflite.quantize import (
    activation_qparams,
    activation_qparams16,
    constant_qparams,
    int_bounds,
    quantize,
    widened,
)

Op = BuiltinOperator
_LOG = logging.getLogger("nirc.tflite")

#: Operator versions for int8 kernels (LiteRT resolves builtins by (code, version));
#: float kernels are version 1 unless an option needs a later one.
_INT8_VERSIONS: dict[int, int] = {
    Op.ADD: 2, Op.SUB: 2, Op.MUL: 2, Op.CONV_2D: 3, Op.DEPTHWISE_CONV_2D: 3,
    Op.FULLY_CONNECTED: 4, Op.AVERAGE_POOL_2D: 2, Op.MAX_POOL_2D: 2, Op.CONCATENATION: 2,
    Op.SOFTMAX: 2, Op.LOGISTIC: 2, Op.TANH: 2, Op.RELU: 2, Op.RELU6: 2, Op.LEAKY_RELU: 2,
    Op.MEAN: 2, Op.PAD: 2, Op.PADV2: 2, Op.SLICE: 2, Op.STRIDED_SLICE: 2, Op.SPLIT: 2,
    Op.SPLIT_V: 2, Op.TRANSPOSE: 2, Op.RESIZE_BILINEAR: 2, Op.RESIZE_NEAREST_NEIGHBOR: 2,
    Op.DEQUANTIZE: 2, Op.MAXIMUM: 2, Op.MINIMUM: 2, Op.PRELU: 1, Op.GELU: 2, Op.RSQRT: 2, Op.LOG: 2,
    Op.BATCH_MATMUL: 2, Op.GATHER: 2, Op.EXP: 2, Op.ABS: 2, Op.SQRT: 2, Op.SUM: 2,
    Op.REDUCE_MAX: 2, Op.REDUCE_MIN: 2,
}  # fmt: skip


#: Operator versions of the 16x8 kernels (int16 activations, int8 weights) where they differ.
_INT16_VERSIONS: dict[int, int] = {
    Op.CONV_2D: 4, Op.DEPTHWISE_CONV_2D: 5, Op.FULLY_CONNECTED: 7, Op.ADD: 3, Op.SUB: 3, Op.MUL: 4,
    Op.AVERAGE_POOL_2D: 3, Op.MAX_POOL_2D: 3, Op.CONCATENATION: 3, Op.PAD: 4, Op.QUANTIZE: 4,
    Op.DEQUANTIZE: 4, Op.MEAN: 3, Op.RESHAPE: 1, Op.TRANSPOSE: 5, Op.MAXIMUM: 4, Op.MINIMUM: 4,
    Op.LOGISTIC: 3, Op.TANH: 3,
}  # fmt: skip


def op_version(builtin: int, int8: bool, options: Options | None, int16: bool = False) -> int:
    version = _INT8_VERSIONS.get(builtin, 1) if int8 else 1
    if int16:
        version = max(version, _INT16_VERSIONS.get(builtin, version))
    resize = builtin in (Op.RESIZE_BILINEAR, Op.RESIZE_NEAREST_NEIGHBOR)
    if resize and options is not None and dict(options.fields).get("HalfPixelCenters"):
        version = 3
    return version


@dataclass(eq=False)
class Value:
    """An ONNX tensor as emitted: TFLite tensor index and how its axes are stored.

    ``col_order`` marks a 2-D tensor flattened from NHWC data: stored column ``j``
    holds ONNX column ``col_order[j]``.  Only FC lowerings accept it (they permute
    their weight instead); see :func:`nirc.tflite.layout.nchw_flatten_order`.
    """

    tensor: int
    perm: tuple[int, ...]
    onnx_shape: tuple[int, ...]
    col_order: np.ndarray | None = None

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return permute_shape(self.onnx_shape, self.perm)


class Emitter:
    """Builds the TFLite model for one ONNX graph, node by node."""

    def __init__(self, info: GraphInfo, *, int8: bool, plan: QuantPlan | None, fusion: FusionPlan) -> None:
        self.info = info
        self.int8 = int8
        self.plan = plan
        self.fusion = fusion
        self.mb = ModelBuilder()
        self.values: dict[str, Value] = {}
        self._converted: dict[tuple[str, tuple[int, ...]], Value] = {}
        self._moved: dict[tuple[int, tuple[int, ...]], int] = {}
        self.node_index: int = -1
        self.transposes: list[str] = []
        #: Whether the node being lowered computes in int16 (its planned output is wide): its
        #: inputs, derived intermediates and constant operands are then int16 too.
        self.wide = False
        self._fitted: dict[tuple[int, QParams], int] = {}

    # -- facts -----------------------------------------------------------------------
    @property
    def act_dtype(self) -> str:
        return "int8" if self.int8 else "float32"

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info.shape(name)

    def const(self, name: str) -> np.ndarray | None:
        return self.info.const(name)

    def qparams(self, name: str) -> QParams | None:
        """Planned int8 parameters of an ONNX tensor (None in float mode)."""
        if self.plan is None:
            return None
        return self.plan.qparams(name)

    def quant_of(self, value: Value) -> QParams | None:
        return self.mb.quant_of(value.tensor)

    @staticmethod
    def real_range(q: QParams) -> tuple[float, float]:
        """The real interval an int8 (or int16) tensor with parameters ``q`` can represent."""
        s, z = q.scale[0], q.zero_point[0]
        lo, hi = int_bounds(q)
        return s * (lo - z), s * (hi - z)

    def range_qparams(self, lo: float, hi: float) -> QParams | None:
        """Parameters for an intermediate tensor with a derived (not calibrated) range."""
        if not self.int8:
            return None
        return activation_qparams16(lo, hi) if self.wide else activation_qparams(lo, hi)

    # -- tensors ---------------------------------------------------------------------
    def new_tensor(self, name: str, shape: Sequence[int], quant: QParams | None) -> int:
        dtype = quant.dtype if self.int8 and quant is not None else self.act_dtype
        return self.mb.add_tensor(name, tuple(shape), dtype, quant)

    def int_const(self, name: str, values: npt.ArrayLike) -> int:
        return self.mb.add_constant(name, np.asarray(values, dtype=np.int32))

    def float_const(self, name: str, array: np.ndarray, quant: QParams | None = None) -> int:
        """A constant activation-typed operand: float32, or int8 with ``quant``/its own range."""
        arr = np.asarray(array, dtype=np.float32)
        if not self.int8:
            return self.mb.add_constant(name, arr)
        q = quant or constant_qparams(arr, 16 if self.wide else 8)
        return self.mb.add_constant(name, quantize(arr, q), q)

    # -- values ----------------------------------------------------------------------
    def define(
        self,
        name: str,
        perm: Sequence[int] | None = None,
        quant: QParams | None = None,
        shape: Sequence[int] | None = None,
    ) -> Value:
        """Create the TFLite tensor of ONNX tensor ``name`` (planned quant unless given)."""
        onnx_shape = tuple(shape) if shape is not None else self.shape(name)
        p = tuple(perm) if perm is not None else standard_perm(len(onnx_shape))
        q = quant if quant is not None else self.qparams(name)
        tensor = self.new_tensor(name, permute_shape(onnx_shape, p), q)
        value = Value(tensor, p, onnx_shape)
        self.values[name] = value
        return value

    def alias(self, name: str, value: Value) -> None:
        self.values[name] = value

    def value(self, name: str, perm: Sequence[int] | None = None) -> Value:
        """ONNX tensor ``name`` stored in ``perm`` (default: the standard layout)."""
        const = self.const(name)
        if const is not None:
            p = tuple(perm) if perm is not None else standard_perm(const.ndim)
            arr = np.ascontiguousarray(np.asarray(const).transpose(p))
            return Value(self.float_const(name, arr), p, tuple(const.shape))
        if name not in self.values:
            raise BackendError(f"tensor '{name}' used before it is produced")
        v = self.values[name]
        want = tuple(perm) if perm is not None else standard_perm(len(v.onnx_shape))
        if v.col_order is not None:
            raise BackendError(f"tensor '{name}': flattened NHWC tensor consumed by a non-FC op")
        if v.perm == want:
            return self.fit(v, name)
        key = (name, want)
        if key not in self._converted:
            self._converted[key] = self._relayout(name, v, want)
        return self.fit(self._converted[key], name)

    def stored(self, name: str) -> Value:
        """ONNX tensor ``name`` in whatever layout it is stored in (constants: ONNX order).

        Layout-agnostic lowerings (data movement, elementwise, reductions, softmax, matmul)
        read their input here and say in the attributes which stored axes they mean, so a
        tensor kept in ONNX order (attention) or NHWC (CNN) is used in place.
        """
        v = self.values.get(name)
        if v is not None and v.col_order is None:
            return self.fit(v, name)
        const = self.const(name)
        return self.value(name, tuple(range(const.ndim)) if const is not None else None)

    def _relayout(self, name: str, v: Value, want: tuple[int, ...]) -> Value:
        rel = compose(invert(v.perm), want)
        done = self._moved.get((v.tensor, rel))
        if done is not None:  # the same buffer already moved this way (e.g. Q and K^T of one tensor)
            return Value(done, want, v.onnx_shape)
        value = self._relayout_new(name, v, want, rel)
        self._moved[(v.tensor, rel)] = value.tensor
        return value

    def _relayout_new(self, name: str, v: Value, want: tuple[int, ...], rel: tuple[int, ...]) -> Value:
        out_shape = permute_shape(v.onnx_shape, want)
        out = self.new_tensor(f"{name}/perm", out_shape, self.quant_of(v))
        if is_memory_noop(v.stored_shape, rel):
            self.reshape(v.tensor, out)
        else:
            # Only rank changes of real feature maps (and ONNX Transposes) get here.
            _LOG.warning(
                "tensor '%s': layout %s -> %s moves data, emitting a TRANSPOSE "
                "(Vela runs only some transposes on the NPU)",
                name, v.perm, want,
            )  # fmt: skip
            self.transposes.append(name)
            self.op(Op.TRANSPOSE, [v.tensor, self.int_const(f"{name}/perm_axes", rel)], [out])
        return Value(out, want, v.onnx_shape)

    def reshape(self, src: int, dst: int) -> None:
        shape = self.mb.shape_of(dst)
        self.op(Op.RESHAPE, [src, self.int_const(f"{self.mb.name_of(dst)}/shape", shape)], [dst])

    def reshaped(
        self, v: Value, onnx_shape: Sequence[int], name: str, perm: Sequence[int] | None = None
    ) -> Value:
        """``v`` reshaped (in ONNX element order) to ``onnx_shape``, in ``perm`` (default: standard layout).

        One RESHAPE when neither side's layout moves data; otherwise the needed
        relayouts (possibly TRANSPOSEs) around a RESHAPE in ONNX order.
        """
        shape = tuple(onnx_shape)
        target = tuple(perm) if perm is not None else standard_perm(len(shape))
        if shape == v.onnx_shape:
            return self.value_of(v, target, name)
        if is_memory_noop(v.stored_shape, invert(v.perm)) and is_memory_noop(shape, target):
            out = self.new_tensor(f"{name}/reshape", permute_shape(shape, target), self.quant_of(v))
            self.reshape(v.tensor, out)
            return Value(out, target, shape)
        src = self.value_of(v, tuple(range(len(v.onnx_shape))), name)
        ident = tuple(range(len(shape)))
        flat = self.new_tensor(f"{name}/reshape", shape, self.quant_of(v))
        self.reshape(src.tensor, flat)
        return self.value_of(Value(flat, ident, shape), target, name)

    def value_of(self, v: Value, want: Sequence[int], name: str) -> Value:
        """Like :meth:`value` for an already-emitted (possibly temporary) Value."""
        want_t = tuple(want)
        if v.perm == want_t:
            return v
        return self._relayout(name, v, want_t)

    def fit(self, v: Value, name: str) -> Value:
        """``v`` in the width of the node being lowered: a QUANTIZE at an int8/int16 boundary.

        Widening keeps every int8 value (:func:`~nirc.tflite.quantize.widened`); narrowing
        uses the tensor's planned int8 parameters, as if it had never been wide.
        """
        q = self.quant_of(v)
        if q is None or self.plan is None or not q.per_tensor or (q.bits == 16) == self.wide:
            return v
        narrow = self.plan.narrow(name) or activation_qparams(*self.real_range(q))
        target = widened(q) if self.wide else narrow
        key = (v.tensor, target)
        done = self._fitted.get(key)
        if done is None:
            done = self.requant(v, target, name).tensor
            self._fitted[key] = done
        return Value(done, v.perm, v.onnx_shape, v.col_order)

    def requant(self, v: Value, quant: QParams | None, name: str) -> Value:
        """``v`` with int8 parameters ``quant``, via a QUANTIZE (int8->int8 rescale) if needed."""
        if quant is None or self.quant_of(v) == quant:
            return v
        out = self.new_tensor(f"{name}/requant", v.stored_shape, quant)
        self.op(Op.QUANTIZE, [v.tensor], [out])
        return Value(out, v.perm, v.onnx_shape, v.col_order)

    # -- operators -------------------------------------------------------------------
    def op(
        self, builtin: int, inputs: Sequence[int], outputs: Sequence[int], options: Options | None = None
    ) -> None:
        int16 = self.int8 and any(self.mb.dtype_of(t) == "int16" for t in (*inputs, *outputs) if t >= 0)
        if int16 and builtin in (Op.ADD, Op.SUB) and options is not None:
            # General int16 scales: the default (power-of-two scales only) is not what nirc plans.
            options = Options(options.name, (*options.fields, ("PotScaleInt16", False)))
        self.mb.add_operator(
            builtin, list(inputs), list(outputs), options, op_version(builtin, self.int8, options, int16)
        )

    def activation(self, node: onnx.NodeProto) -> tuple[int, str]:
        """(fused activation, ONNX name of the final output) for the node being lowered."""
        hit = self.fusion.fused.get(self.node_index)
        if hit is None:
            return int(Activation.NONE), node.output[0]
        return hit
