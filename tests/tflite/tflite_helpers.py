"""Shared helpers for the TFLite emitter tests: build, run (ORT / LiteRT), calibrate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from onnx import TensorProto, helper, numpy_helper
from tflite.BuiltinOperator import BuiltinOperator
from tflite.Model import Model

from nirc.tflite import TFLiteModel

OPSET = 18
_OP_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Sequence[int]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """An opset-18 model with shapes inferred (strict, data_prop) as nirc guarantees."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, dict(feeds))]


def run_litert(tfl: TFLiteModel, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run with LiteRT's reference-free builtin kernels; I/O in ONNX layout and float."""
    interp = Interpreter(
        model_content=tfl.data,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        num_threads=1,
    )
    interp.allocate_tensors()
    for io, detail in zip(tfl.inputs, interp.get_input_details(), strict=True):
        x = np.asarray(feeds[io.name], np.float32)
        if io.perm is not None:
            x = x.transpose(io.perm)
        if io.dtype == "int8":
            assert io.scale is not None and io.zero_point is not None
            x = np.clip(np.round(x / io.scale) + io.zero_point, -128, 127).astype(np.int8)
        interp.set_tensor(detail["index"], np.ascontiguousarray(x))
    interp.invoke()
    results = []
    for io, detail in zip(tfl.outputs, interp.get_output_details(), strict=True):
        y = interp.get_tensor(detail["index"])
        if io.dtype == "int8":
            assert io.scale is not None and io.zero_point is not None
            y = (y.astype(np.float32) - io.zero_point) * io.scale
        if io.perm is not None:
            y = y.transpose(np.argsort(io.perm))
        results.append(np.asarray(y, np.float32))
    return results


def op_names(data: bytes) -> list[str]:
    """Builtin op names of every operator in the (single) subgraph, in order."""
    model = Model.GetRootAsModel(data, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(oc.CustomCode().decode() if code == BuiltinOperator.CUSTOM else _OP_NAMES[code])
    sg = model.Subgraphs(0)
    return [codes[sg.Operators(i).OpcodeIndex()] for i in range(sg.OperatorsLength())]


def calibrate(
    model: onnx.ModelProto, feeds_list: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, tuple[float, float]]:
    """(min, max) of every float tensor (inputs and node outputs) over the feeds."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    vis = {vi.name: vi for vi in m.graph.value_info}
    for node in m.graph.node:
        for out in node.output:
            is_float = out in vis and vis[out].type.tensor_type.elem_type == TensorProto.FLOAT
            if out and out not in existing and is_float:
                m.graph.output.append(vis[out])
                existing.add(out)
    names = [o.name for o in m.graph.output]
    ranges: dict[str, tuple[float, float]] = {}
    for feeds in feeds_list:
        values = dict(zip(names, run_ort(m, feeds), strict=True))
        values.update(feeds)
        for n, v in values.items():
            lo, hi = float(np.min(v)), float(np.max(v))
            old = ranges.get(n)
            ranges[n] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return ranges


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    ref64 = np.asarray(ref, np.float64)
    err = np.sum((ref64 - np.asarray(out, np.float64)) ** 2)
    return float(10 * np.log10(np.sum(ref64**2) / max(err, 1e-30)))
