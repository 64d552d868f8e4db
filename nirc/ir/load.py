"""Turn whatever the user hands us into one canonical, fully static ONNX model.

Every pass and the backend rely on three invariants established here: a single
opset (:data:`CANONICAL_OPSET`), only the default ONNX domain, and a static
shape for every tensor. Checking them once at the door keeps the passes simple
and lets bad input fail with one line that names the file.

Opsets read: :data:`OLDEST_OPSET` (7) through the newest the installed ``onnx``
knows. Older models go up with ONNX's version converter; newer ones come down
with :mod:`nirc.ir.opset`, which lowers ops born after 18 (``Gelu``-20,
``Swish``-24, ``RMSNormalization``-23) to the opset-18 spelling the TorchScript
exporter writes and retags ops that only widened their types, because the
converter has no adapter "down" for a newer op (dynamo exports with GELU used
to stop here with exit 2). Anything else is refused in one line naming each op
type and its count.

Why the canonical opset stays 18 (measured 2026-12, onnx 1.23, ORT 1.32): with
20 or 21 instead, TorchScript opset-17 exports still convert up and compile
(GhostNet, tiny_cnn), but a dynamo ``Gelu`` then reaches the emitter as an op
with no TFLite rule (exit 3, "unsupported ops: Gelu x2") and the two exporters'
GELUs stay in different forms; at 18 both exports of a GELU/LayerNorm network
give the same int8 op sequence and the same Vela cycles (20,448). No op nirc
emits or rewrites needs a version newer than 18, so moving up buys nothing yet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import shape_inference, version_converter

from nirc.errors import DynamicShapeError, ModelLoadError, UnsupportedOperatorError
from nirc.ir.detach import attach_weights, detach_weights
from nirc.ir.opset import DEFAULT_DOMAINS, downgrade

logger = logging.getLogger(__name__)

CANONICAL_OPSET = 18
"""The opset every model is converted to (see the module docstring for why 18)."""
OLDEST_OPSET = 7
"""The oldest opset read: ONNX's converter has adapters upwards from here (BatchNorm-7 on)."""


def read_model(source: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Parse the input; return the proto and a label to name it in messages."""
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
    if isinstance(source, bytes | bytearray):
        try:
            parsed = onnx.load_from_string(bytes(source))
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"<bytes>: not a valid ONNX model ({_one_line(exc)})") from exc
        if not parsed.graph.node and not parsed.graph.output:
            raise ModelLoadError("<bytes>: not a valid ONNX model (empty graph)")
        return parsed, "<model>"
    path = Path(source)
    label = str(path)
    if not path.exists():
        raise ModelLoadError(f"{label}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{label}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{label}: not a valid ONNX model ({_one_line(exc)})") from exc
    _load_external_data(model, path, label)
    if not model.graph.node and not model.graph.output:
        # An arbitrary file often parses as an empty ModelProto.
        raise ModelLoadError(f"{label}: not a valid ONNX model (empty graph)")
    return model, label


def _load_external_data(model: onnx.ModelProto, path: Path, label: str) -> None:
    """Weights stored beside the model (large exports): a missing or short file is the user's to fix."""
    from onnx import external_data_helper

    tensors = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
    for tensor in tensors:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not (path.parent / location).is_file():
            raise ModelLoadError(
                f"{label}: external data file '{location}' (tensor '{tensor.name}') not found next to the model"
            )
    if tensors:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # onnx raises ValidationError, OSError or ValueError variants
            raise ModelLoadError(f"{label}: cannot read external data ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_domains(model: onnx.ModelProto, label: str) -> None:
    """Reject custom-domain ops up front: nothing downstream could lower them."""
    foreign: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            key = f"{node.domain}::{node.op_type}"
            foreign[key] = foreign.get(key, 0) + 1
    if foreign:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(foreign.items()))
        raise UnsupportedOperatorError(f"{label}: ops from unsupported domains: {listed}")


def convert_opset(model: onnx.ModelProto, label: str, opset: int = CANONICAL_OPSET) -> onnx.ModelProto:
    """Bring the model to ``opset``: ONNX's converter upwards, :mod:`nirc.ir.opset` downwards.

    Read: opsets :data:`OLDEST_OPSET` through the newest the installed ``onnx`` knows.
    """
    current = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if current is None:
        raise ModelLoadError(f"{label}: model declares no default-domain opset")
    newest = onnx.defs.onnx_opset_version()
    if current < OLDEST_OPSET or current > newest:
        raise ModelLoadError(
            f"{label}: opset {current} is outside the opsets nirc reads "
            f"({OLDEST_OPSET} to {newest}, the newest onnx {onnx.__version__} knows)"
        )
    if current == opset:
        return model
    if current > opset:
        converted = downgrade(model, label, current, opset)
        logger.info("%s: lowered opset %d -> %d", label, current, opset)
        return converted
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises bare RuntimeError/ValueError variants
        raise ModelLoadError(
            f"{label}: cannot convert from opset {current} to {opset} ({_one_line(exc)})"
        ) from exc
    logger.info("%s: converted opset %d -> %d", label, current, opset)
    return converted


def fix_input_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], label: str
) -> None:
    """Overwrite graph input dims in place; unknown names are an error, not a no-op."""
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    for name, shape in input_shapes.items():
        if name not in inputs:
            raise ModelLoadError(
                f"{label}: --input-shape names '{name}', but the model's inputs are {sorted(inputs)}"
            )
        tensor_type = inputs[name].type.tensor_type
        if tensor_type.HasField("shape") and len(tensor_type.shape.dim) != len(shape):
            raise ModelLoadError(
                f"{label}: --input-shape {name} has rank {len(shape)}, "
                f"the model's input has rank {len(tensor_type.shape.dim)}"
            )
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            _check_static_dims_kept(name, dims, shape, label)
        del tensor_type.shape.dim[:]
        for size in shape:
            if size <= 0:
                raise ModelLoadError(f"{label}: --input-shape {name} has a non-positive dim {size}")
            tensor_type.shape.dim.add().dim_value = int(size)


def _check_static_dims_kept(name: str, dims: Sequence[int | None], shape: Sequence[int], label: str) -> None:
    """--input-shape fixes dynamic dims; changing a static one would compile a different model silently.

    A model exported at 32x32 may hold constants (Reshape targets, pooling windows) that only
    fit 32x32, so a static dim is the exporter's decision: re-export with dynamic axes to change it.
    """
    changed = [(i, d, s) for i, (d, s) in enumerate(zip(dims, shape, strict=True)) if d is not None and d != s]
    if changed:
        i, old, new = changed[0]
        static = ",".join("?" if d is None else str(d) for d in dims)
        raise ModelLoadError(
            f"{label}: --input-shape {name}={','.join(map(str, shape))} changes static dim {i} from {old} to {new} "
            f"(the input is [{static}]); only dynamic dims can be set: re-export the model with dynamic axes"
        )


def _static_dims(value: onnx.ValueInfoProto) -> list[int] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(dim.dim_value)
    return dims


def check_static_inputs(model: onnx.ModelProto, label: str) -> None:
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        if _static_dims(value) is None:
            dims = [
                d.dim_param or "?" if not d.HasField("dim_value") else str(d.dim_value)
                for d in value.type.tensor_type.shape.dim
            ]
            raise DynamicShapeError(
                f"{label}: input '{value.name}' has dynamic shape [{','.join(dims)}]; "
                f"fix it with e.g. --input-shape {value.name}=" + ",".join(d if d.isdigit() else "1" for d in dims)
            )


def infer_static_shapes(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Shape inference that must leave no tensor without a static shape.

    ONNX's symbolic inference cannot always see through shape arithmetic
    (Shape→Gather→Concat→Reshape, as PyTorch exports emit); the inputs are static
    by now, so running ONNX Runtime once on zeros gives the true shapes.
    """
    try:
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"{label}: shape inference failed ({_one_line(exc)})") from exc
    missing = _tensors_without_static_shape(inferred)
    if missing:
        inferred = _shapes_from_runtime(inferred, missing, label)
        missing = _tensors_without_static_shape(inferred)
    if missing:
        raise DynamicShapeError(f"{label}: cannot resolve a static shape for tensor '{missing[0]}'")
    return inferred


def _tensors_without_static_shape(model: onnx.ModelProto) -> list[str]:
    known = {
        v.name
        for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)
        if _static_dims(v) is not None
    }
    known.update(i.name for i in model.graph.initializer)
    return [o for n in model.graph.node for o in n.output if o and o not in known]


def _shapes_from_runtime(model: onnx.ModelProto, names: list[str], label: str) -> onnx.ModelProto:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.add().name = name
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: _zeros_for(i) for i in session.get_inputs()}
        results = session.run(names, feeds)
    except Exception as exc:
        raise DynamicShapeError(
            f"{label}: cannot resolve static shapes for {len(names)} tensors ({_one_line(exc)})"
        ) from exc
    by_name = {v.name: v for v in model.graph.value_info}
    for name, array in zip(names, results, strict=True):
        dtype = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)
        info = onnx.helper.make_tensor_value_info(name, dtype, list(np.shape(array)))
        if name in by_name:
            by_name[name].CopyFrom(info)
        else:
            model.graph.value_info.append(info)
    return model


def _zeros_for(arg: object) -> np.ndarray:
    shape = [int(d) for d in getattr(arg, "shape")]  # noqa: B009 - ORT NodeArg is untyped
    type_name = str(getattr(arg, "type"))  # noqa: B009
    dtype = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }.get(type_name, np.float32)
    return np.zeros(shape, dtype=dtype)


def check_model(model: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(detach_weights(model)[0])  # the checker copies the model twice
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"{label}: ONNX checker failed: {_one_line(exc)}") from exc


def check_finite_weights(model: onnx.ModelProto, label: str, more: Sequence[onnx.TensorProto] = ()) -> None:
    """NaN or infinite weights make every later number meaningless: name the first such tensor now.

    Scalar infinities are allowed: they are how ONNX spells an open bound (Clip(0, inf)).

    Left to calibration, the NaN surfaces as a non-finite activation range on some
    downstream tensor, which blames the calibration data and the wrong tensor.
    """
    from onnx import numpy_helper

    constants = [(t.name, t) for t in (*model.graph.initializer, *more)]
    constants += [
        (node.output[0], attr.t)
        for node in model.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    ]
    for name, tensor in constants:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(tensor)
        # A scalar +-inf is a bound (Clip min/max, a -inf MaxPool pad value, Max/Min limits), not a
        # broken weight; NaN is never meaningful, and inf inside a weight tensor is a diverged model.
        bad = int(np.count_nonzero(np.isnan(values)))
        if values.size > 1:
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ModelLoadError(
                f"{label}: weight tensor '{name}' has {bad} NaN or infinite value(s) of {values.size}; "
                "the model itself is broken (e.g. a diverged training run), not the calibration data"
            )


_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


def canonicalize(
    source: str | Path | bytes | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[onnx.ModelProto, str]:
    """The whole front door: parse, check, inline functions, one opset, static shapes."""
    model, label = read_model(source)
    model, detached = detach_weights(model)  # the tools below need the weights' shapes, not their values
    if model is source and input_shapes:
        model = onnx.ModelProto()  # fixing the input dims must not edit the caller's proto
        model.CopyFrom(source)
    check_model(model, label)
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    check_domains(model, label)
    model = convert_opset(model, label)
    if input_shapes:
        fix_input_shapes(model, input_shapes, label)
    check_static_inputs(model, label)
    check_finite_weights(model, label, detached.heavy)
    return attach_weights(infer_static_shapes(model, label), detached), label
